"""Built-in synthetic demo corpus: small multi-stem songs with the MUSDB stem names.

Every track is a short song with a random tempo, key and looping four-chord
progression shared by all stems, so the harmony is consistent and the sources
overlap in time and frequency the way real stems do:

* ``vocals``: glottal-pulse harmonics shaped by vowel formants, a melody in the
  key with vibrato, portamento and consonant/breath noise, sung in phrases
  separated by rests.
* ``drums``: kick, snare, hi-hats, toms and crash on a per-bar varied pattern.
* ``bass``: a plucked, low-passed saw-like bass following the chord roots.
* ``other``: piano-like comping and/or arpeggios and/or a detuned pad.

Every stem is a recording, not a bare synthesizer: it carries its own microphone and
preamp noise floor (independent per channel, 60 dB below the stem's RMS), as stems of
real multitracks do. Besides realism this keeps every reference broadband, so BSSEval's
distortion filters are well-conditioned and its isr/sir/sar are defined (a band-limited
synthesizer leaves whole bands empty and its Gram matrix singular).

Everything is numpy only: no torch, no file I/O. A track depends on
``(seed, index)`` only, and its score (notes, hits, panning) does not depend on
the sample rate either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mss_tools.errors import BadInput

DEMO_SOURCES = ("vocals", "drums", "bass", "other")  # MUSDB order
DEMO_CORPUS_VERSION = 2  # part of a demo cache's fingerprint: bump when the audio of a track changes
NOISE_FLOOR_DB = -60.0   # each stem's recording noise, relative to the stem's RMS

_TWO_PI = 2.0 * np.pi
_BEATS_PER_BAR = 4

_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chord progressions as scale degrees (0 = tonic), one chord per bar, looping.
_PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (1, 4, 0, 5), (0, 3, 0, 4), (5, 3, 0, 4), (0, 2, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 5, 3, 4), (0, 3, 6, 2)),
}
# Vowel formants (frequency Hz, bandwidth Hz) for F1-F3, adult-voice averages.
_VOWELS = (
    ((730, 90), (1090, 110), (2440, 140)),  # /a/
    ((530, 70), (1840, 110), (2480, 150)),  # /e/
    ((290, 60), (2250, 100), (2900, 160)),  # /i/
    ((570, 80), (840, 90), (2410, 140)),  # /o/
    ((300, 60), (870, 90), (2240, 140)),  # /u/
)
_UPPER_FORMANTS = ((3400, 250), (4300, 300))  # F4, F5: vowel independent


def demo_track_names(n_tracks: int = 20, n_valid: int = 3, n_test: int = 3) -> list[tuple[str, str]]:
    """The demo corpus' tracks: ``[(split, name), ...]`` of length ``n_tracks``.

    Names are ``demo-000``, ``demo-001``, ... (the track index, zero padded); the
    first ``n_tracks - n_valid - n_test`` are ``train``, then ``valid``, then ``test``.
    """
    if n_tracks < 1 or n_valid < 0 or n_test < 0:
        raise BadInput(f"demo corpus: need n_tracks >= 1 and n_valid, n_test >= 0 "
                       f"(got {n_tracks}, {n_valid}, {n_test})")
    n_train = n_tracks - n_valid - n_test
    if n_train < 1:
        raise BadInput(f"demo corpus: {n_tracks} tracks leave no training track after "
                       f"{n_valid} valid and {n_test} test tracks")
    width = max(3, len(str(n_tracks - 1)))
    splits = ["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test
    return [(split, f"demo-{i:0{width}d}") for i, split in enumerate(splits)]


def synthesize_track(index: int, seed: int = 0, duration: float = 12.0,
                     sample_rate: int = 44100) -> dict[str, np.ndarray]:
    """The stems of demo track ``index``: ``{stem: float32 array (2, time)}`` for ``DEMO_SOURCES``.

    ``time = round(duration * sample_rate)``. The result depends on ``(seed, index)``
    only. The stems' sum (the mixture) peaks at 0.5-0.85 and the stems' RMS levels
    lie within about 6 dB of each other.
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise BadInput(f"demo corpus: track index must be an integer >= 0, got {index!r}")
    if not np.isfinite(duration) or duration <= 0:
        raise BadInput(f"demo corpus: duration must be positive, got {duration}")
    if int(sample_rate) != sample_rate or sample_rate < 8000:
        raise BadInput(f"demo corpus: sample rate must be an integer >= 8000, got {sample_rate}")
    sample_rate = int(sample_rate)
    n = max(1, int(round(duration * sample_rate)))

    # Independent random streams per part. Noise (whose draws depend on the number
    # of samples) has streams of its own, so the score is the same at any rate.
    streams = np.random.SeedSequence([int(seed) % 2**64, int(index)]).spawn(9)
    song_rng, mix_rng, vocal_rng, vocal_noise, drum_rng, drum_noise, bass_rng, other_rng, floor_rng = (
        np.random.default_rng(s) for s in streams)
    song = _make_song(song_rng, sample_rate, n)
    stems = {
        "vocals": _render_vocals(song, vocal_rng, vocal_noise),
        "drums": _render_drums(song, drum_rng, drum_noise),
        "bass": _render_bass(song, bass_rng),
        "other": _render_other(song, other_rng),
    }
    stems = {name: _record(x, floor_rng) for name, x in stems.items()}
    return _mix_levels(stems, mix_rng, sample_rate)


def _record(stem: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``stem`` (2, n) plus its recording noise floor: white, independent per channel,
    :data:`NOISE_FLOOR_DB` below the stem's RMS."""
    level = np.float32(_rms(stem) * 10 ** (NOISE_FLOOR_DB / 20))
    return stem + level * rng.standard_normal(stem.shape, dtype=np.float32)


# --------------------------------------------------------------------------- song


@dataclass(frozen=True)
class _Song:
    sr: int
    n: int                    # samples
    beat: float               # seconds per beat
    shift: float              # song time (s) at sample 0: excerpts start mid-bar
    n_bars: int               # bars covering the excerpt
    tonic: int                # pitch class 0-11
    scale: tuple[int, ...]    # semitones above the tonic
    triads: tuple[tuple[int, ...], ...]   # pitch classes per progression slot, root first
    sevenths: tuple[tuple[int, ...], ...]

    @property
    def bar(self) -> float:
        return _BEATS_PER_BAR * self.beat

    def time(self, beats: float) -> float:
        """Excerpt time (s) of a song position given in beats from bar 0."""
        return beats * self.beat - self.shift

    def sample(self, seconds: float) -> int:
        return int(round(seconds * self.sr))

    def chord(self, bar: int, sevenths: bool = False) -> tuple[int, ...]:
        chords = self.sevenths if sevenths else self.triads
        return chords[bar % len(chords)]

    def scale_pitches(self, lo: int, hi: int) -> np.ndarray:
        """MIDI pitches of the key in [lo, hi]."""
        m = np.arange(lo, hi + 1)
        return m[np.isin((m - self.tonic) % 12, self.scale)]


def _make_song(rng: np.random.Generator, sr: int, n: int) -> _Song:
    bpm = rng.uniform(90.0, 140.0)
    beat = 60.0 / bpm
    shift = rng.integers(0, 8) * beat / 2  # start on any eighth of the first bar
    mode = "major" if rng.random() < 0.6 else "minor"
    scale = _SCALES[mode]
    tonic = int(rng.integers(12))
    progression = _PROGRESSIONS[mode][rng.integers(len(_PROGRESSIONS[mode]))]

    def chord(degree: int, size: int) -> tuple[int, ...]:
        return tuple((tonic + scale[(degree + 2 * i) % 7]) % 12 for i in range(size))

    n_bars = int(np.ceil((n / sr + shift) / (_BEATS_PER_BAR * beat))) + 1
    return _Song(sr=sr, n=n, beat=beat, shift=shift, n_bars=n_bars, tonic=tonic, scale=scale,
                 triads=tuple(chord(d, 3) for d in progression),
                 sevenths=tuple(chord(d, 4) for d in progression))


def _mix_levels(stems: dict[str, np.ndarray], rng: np.random.Generator, sr: int) -> dict[str, np.ndarray]:
    """Level the stems (random gains within +-3 dB of equal RMS), fade the excerpt's
    edges and scale all so that the mixture peaks at 0.5-0.85; float32 (2, n) each."""
    n = next(iter(stems.values())).shape[-1]
    fade_in, fade_out = min(n // 4, int(0.005 * sr)), min(n // 4, int(0.01 * sr))
    out = {}
    for name in DEMO_SOURCES:
        x = stems[name]
        for ch in x:
            _fade(ch, fade_in, fade_out)
        rms = _rms(x)
        out[name] = x * np.float32(10 ** (rng.uniform(-3.0, 3.0) / 20) / rms if rms > 0 else 0.0)
    peak = float(np.max(np.abs(sum(out.values()))))
    scale = np.float32(rng.uniform(0.5, 0.85) / peak if peak > 0 else 1.0)
    return {name: np.ascontiguousarray(x * scale, dtype=np.float32) for name, x in out.items()}


# --------------------------------------------------------------------------- DSP helpers


def _midi_hz(m):
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


def _phase(freq, length: int, sr: int) -> np.ndarray:
    """Phase (radians in [0, 2 pi), float32 (length,)) of an oscillator whose
    frequency (Hz) is a constant or a (length,) array: phase-continuous.

    Cycles are accumulated in float32 within blocks of 2048 samples on top of
    float64 block offsets, which is fast and keeps the phase error around 1e-4 rad.
    """
    block = 2048
    n_blocks = -(-length // block)
    if np.ndim(freq) == 0:
        inc = float(freq) / sr
        offsets = np.arange(n_blocks) * (block * inc)
        local = (np.arange(block, dtype=np.float32) * np.float32(inc))[None, :]
    else:
        inc = np.zeros(n_blocks * block, dtype=np.float32)
        inc[:length] = np.asarray(freq, dtype=np.float32) / np.float32(sr)
        inc = inc.reshape(n_blocks, block)
        local = np.cumsum(inc, axis=1)
        local -= inc                                   # phase starts at 0
        totals = local[:, -1].astype(np.float64) + inc[:, -1]
        offsets = np.concatenate([[0.0], np.cumsum(totals[:-1])])
    offsets -= np.floor(offsets)
    cycles = offsets.astype(np.float32)[:, None] + local
    cycles -= np.floor(cycles)
    cycles *= np.float32(_TWO_PI)
    return cycles.reshape(-1)[:length]


def _n_harmonics(f_max: float, sr: int, cap_hz: float) -> int:
    """Harmonics of a tone with fundamental up to f_max kept below 0.45 sr and cap_hz."""
    return max(1, int(min(0.45 * sr, cap_hz) // f_max))


def _dsf(phase: np.ndarray, n_harm: int, r) -> np.ndarray:
    """Band-limited sum_{k=1..K} r^k sin(k phase) in closed form (discrete summation
    formula), scaled to unit sum of squared amplitudes at ``max(r)``.

    phase: float32 (L,) radians; r: scalar or float32 (L,) in (0, 0.95]. Returns float32 (L,).
    """
    if np.ndim(r) == 0:
        r = np.float32(r)
        r_k1 = np.float32(r ** (n_harm + 1))
    else:
        r = np.asarray(r, dtype=np.float32)
        r_k1 = np.exp(np.float32(n_harm + 1) * np.log(r))
    out = r * np.sin(phase)
    out -= r_k1 * np.sin(np.float32(n_harm + 1) * phase)
    out += r_k1 * r * np.sin(np.float32(n_harm) * phase)
    den = np.cos(phase)
    den *= -2.0 * r
    den += 1.0 + r * r
    out /= den
    r0 = float(np.max(r))
    out *= np.float32(1.0 / (r0 * np.sqrt((1.0 - r0 ** (2 * n_harm)) / (1.0 - r0 * r0))))
    return out


def _ramp(length: int, total: int, rising: bool) -> np.ndarray:
    """Raised-cosine (sin^2) ramp of ``length`` samples, cut to ``total``; float32."""
    length = max(1, min(length, total))
    x = (np.arange(length, dtype=np.float32) + 0.5) / length
    ramp = np.sin(0.5 * np.pi * x) ** 2
    return ramp if rising else ramp[::-1]


def _fade(x: np.ndarray, n_in: int, n_out: int) -> np.ndarray:
    """Apply click-free fades in place to the ends of a 1-D segment; returns it."""
    if x.size and n_in > 0:
        r = _ramp(n_in, x.size, True)
        x[:r.size] *= r
    if x.size and n_out > 0:
        r = _ramp(n_out, x.size, False)
        x[x.size - r.size:] *= r
    return x


def _add(out: np.ndarray, start: int, segment: np.ndarray, gain: float = 1.0) -> None:
    """out[start:start + len] += gain * segment along the last axis, clipped to out."""
    n, length = out.shape[-1], segment.shape[-1]
    a, b = max(start, 0), min(start + length, n)
    if a < b:
        out[..., a:b] += gain * segment[..., a - start:b - start]


def _band_noise(rng: np.random.Generator, length: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-passed to [lo, hi] Hz (soft edges, clamped below Nyquist);
    unit RMS, float32 (length,). Filtered in the frequency domain at a power-of-two
    length (noise is stationary, so cutting it to ``length`` is harmless)."""
    n_fft = 1 << max(0, length - 1).bit_length()
    spec = np.fft.rfft(rng.standard_normal(n_fft).astype(np.float32))
    f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    hi = min(hi, 0.48 * sr)
    lo = min(lo, 0.8 * hi)
    mask = np.clip((f - 0.8 * lo) / (0.2 * lo), 0, 1) * np.clip((1.2 * hi - f) / (0.2 * hi), 0, 1)
    y = np.fft.irfft(spec * mask.astype(np.float32), n_fft)[:length]
    rms = _rms(y)
    return (y / rms if rms > 0 else y).astype(np.float32)


def _pan_add(out: np.ndarray, x: np.ndarray, pan: float, delay: int = 0) -> np.ndarray:
    """Add mono x (n,) to stereo out (2, n) with a constant-power pan in [-1, 1]
    (right > 0); the channel away from the source lags by ``delay`` samples. Returns out."""
    theta = (pan + 1.0) * np.pi / 4.0
    gains = (np.float32(np.cos(theta)), np.float32(np.sin(theta)))
    far = 0 if pan > 0 else 1
    for ch in (0, 1):
        _add(out[ch], delay if ch == far else 0, x, gains[ch])
    return out


def _comb(x: np.ndarray, delay: int, g: float) -> np.ndarray:
    """Feedback comb y[t] = x[t] + g y[t - delay] for mono (n,), one block of
    ``delay`` samples at a time (delays are tens of ms); float32 (n,)."""
    n = x.size
    blocks = -(-n // delay)
    y = np.zeros(blocks * delay, dtype=np.float32)
    y[:n] = x
    y = y.reshape(blocks, delay)
    g = np.float32(g)
    for b in range(1, blocks):
        y[b] += g * y[b - 1]
    return y.reshape(-1)[:n]


def _reverb(x: np.ndarray, sr: int, rng: np.random.Generator, rt60: float, wet: float) -> np.ndarray:
    """Wet part of a small stereo room for mono (n,): (2, n) float32 at ``wet`` times x's RMS.

    Four parallel feedback combs, summed with different signs and pre-delays per
    channel, so that the tails of the two channels are decorrelated.
    """
    n = x.size
    out = np.zeros((2, n), dtype=np.float32)
    rms = _rms(x)
    if rms == 0:
        return out
    delays = (rng.uniform(0.023, 0.047, 4) * sr).astype(int) + 1
    combs = [_comb(x, d, 10 ** (-3.0 * d / (sr * rt60))) for d in delays]
    for ch, signs in enumerate(((1, 1, 1, 1), (1, -1, 1, -1))):
        y = sum(c if sign > 0 else -c for c, sign in zip(combs, signs))
        y[1:] += y[:-1]   # gentle low-pass: darker tail
        _add(out[ch], int(rng.uniform(0.008, 0.025) * sr), y)
    wet_rms = _rms(out)
    return out * np.float32(wet * rms / wet_rms) if wet_rms > 0 else out


def _rms(x: np.ndarray) -> float:
    x = x.ravel()
    return float(np.sqrt(np.dot(x, x) / x.size)) if x.size else 0.0


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = _rms(x)
    return x / np.float32(rms) if rms > 0 else x


# --------------------------------------------------------------------------- bass

# Bass rhythms: onsets in eighths of a bar.
_BASS_RHYTHMS = ((0, 2, 4, 6), (0, 1, 2, 3, 4, 5, 6, 7), (0, 3, 4, 6, 7), (0, 4), (0, 3, 6), (0, 2, 3, 4, 6))


def _render_bass(song: _Song, rng: np.random.Generator) -> np.ndarray:
    """Plucked saw-like bass on the chord roots (E1-E3): stereo (2, n) float32."""
    sr, eighth = song.sr, song.beat / 2
    octave = 12 if rng.random() < 0.3 else 0
    rhythms = [_BASS_RHYTHMS[i] for i in rng.choice(len(_BASS_RHYTHMS), 2, replace=False)]
    r0, bright_tau = rng.uniform(0.5, 0.72), rng.uniform(0.05, 0.2)
    sustain, decay_tau = rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.4)
    legato = rng.uniform(0.6, 0.95)

    notes = []  # (start s, duration s, midi, velocity, slide)
    for bar in range(song.n_bars):
        root = 28 + (song.chord(bar)[0] - 4) % 12 + octave      # E1..D#2 (+ octave)
        next_root = 28 + (song.chord(bar + 1)[0] - 4) % 12 + octave
        onsets = list(rhythms[0] if rng.random() < 0.7 else rhythms[1])
        if len(onsets) > 2 and rng.random() < 0.3:
            onsets.pop(int(rng.integers(1, len(onsets))))
        for j, step in enumerate(onsets):
            nxt = onsets[j + 1] if j + 1 < len(onsets) else 8
            pitch = root
            u = rng.random()
            if step == onsets[-1] and step >= 6 and u < 0.3:   # approach the next root
                pitch = next_root + (1 if rng.random() < 0.5 else -1)
            elif u < 0.2 and step > 0:
                pitch = root + 7 if root + 7 <= 52 else root - 5
            elif u < 0.32 and step > 0 and root + 12 <= 52:
                pitch = root + 12
            start = song.time(bar * _BEATS_PER_BAR + step / 2)
            notes.append((start, (nxt - step) * eighth * legato, pitch,
                          rng.uniform(0.75, 1.0) * (1.0 if step == 0 else 0.9), rng.random() < 0.1))

    out = np.zeros(song.n, dtype=np.float32)
    release = int(0.02 * sr)
    for start, dur, pitch, vel, slide in notes:
        length = int(dur * sr) + release
        s0 = song.sample(start)
        if s0 >= song.n or s0 + length <= 0:
            continue
        t = np.arange(length, dtype=np.float32) / sr
        f0 = _midi_hz(pitch)
        freq = f0 * 2.0 ** (-2.0 / 12 * np.exp(-t / 0.03)) if slide else f0
        r = r0 * (0.6 + 0.4 * np.exp(-t / bright_tau))       # closing low-pass
        tone = _dsf(_phase(freq, length, sr), _n_harmonics(f0, sr, 3000.0), r)
        env = sustain + (1 - sustain) * np.exp(-t / decay_tau)
        _add(out, s0, _fade(tone * env, int(0.004 * sr), release), vel)
    stereo = _pan_add(np.zeros((2, song.n), np.float32), out, rng.uniform(-0.15, 0.15),
                      int(rng.uniform(0, 0.0004) * sr))
    return stereo + _reverb(out, sr, rng, rt60=rng.uniform(0.2, 0.5), wet=rng.uniform(0.05, 0.12))


# --------------------------------------------------------------------------- other

_COMP_RHYTHMS = ((0, 4), (0, 3, 6), (0, 2, 4, 6), (0, 3, 4, 7), (0, 2, 3, 5, 6))
_ARP_ORDERS = ((0, 1, 2, 3, 4, 5, 6, 7), (0, 1, 2, 3, 4, 3, 2, 1), (0, 2, 1, 3, 2, 4, 3, 5), (0, 2, 4, 2, 1, 3, 5, 3))


def _voicing(pcs, center: float) -> list[int]:
    """MIDI notes of pitch classes ``pcs`` each within half an octave of ``center``, sorted."""
    lo = int(np.floor(center - 6))
    return sorted(lo + (pc - lo) % 12 for pc in pcs)


def _piano_note(f0: float, length: int, sr: int, r0: float, tau: float) -> np.ndarray:
    """Piano-like tone: fast attack, exponential decay, brightness decaying faster; float32 (length,)."""
    t = np.arange(length, dtype=np.float32) / sr
    r = r0 * (0.5 + 0.5 * np.exp(-t / (0.3 * tau)))
    tone = _dsf(_phase(f0, length, sr), _n_harmonics(f0, sr, 8000.0), r)
    return _fade(tone * np.exp(-t / tau), int(0.003 * sr), int(0.03 * sr))


def _render_other(song: _Song, rng: np.random.Generator) -> np.ndarray:
    """Chord instruments: piano comping and/or arpeggios, optionally over a pad; stereo (2, n) float32."""
    sr, n = song.sr, song.n
    sevenths = rng.random() < 0.4
    primary = "piano" if rng.random() < 0.55 else "arp"
    layers = [primary]
    if primary == "arp" or rng.random() < 0.5:
        layers.append("pad")
    if primary == "piano" and rng.random() < 0.25:
        layers.append("arp")

    stereo = np.zeros((2, n), dtype=np.float32)
    dry = np.zeros(n, dtype=np.float32)
    for layer in layers:
        x = np.zeros(n, dtype=np.float32)
        if layer == "piano":
            center = rng.uniform(57, 65)
            rhythms = [_COMP_RHYTHMS[i] for i in rng.choice(len(_COMP_RHYTHMS), 2, replace=False)]
            r0, tau0 = rng.uniform(0.5, 0.7), rng.uniform(0.6, 1.2)
            for bar in range(song.n_bars):
                notes = _voicing(song.chord(bar, sevenths), center)
                if rng.random() < 0.3:
                    notes.append(notes[0] + 12)
                onsets = rhythms[0] if rng.random() < 0.7 else rhythms[1]
                for j, step in enumerate(onsets):
                    nxt = onsets[j + 1] if j + 1 < len(onsets) else 8
                    s0 = song.sample(song.time(bar * _BEATS_PER_BAR + step / 2) + rng.normal(0, 0.004))
                    length = int(((nxt - step) * song.beat / 2 * rng.uniform(0.7, 1.0) + 0.03) * sr)
                    vel = rng.uniform(0.7, 1.0) * (1.0 if step == 0 else 0.85) / np.sqrt(len(notes))
                    note_vels = vel * rng.uniform(0.85, 1.0, len(notes))
                    if s0 >= n or s0 + length <= 0:
                        continue
                    for m, note_vel in zip(notes, note_vels):
                        f0 = float(_midi_hz(m))
                        tau = tau0 * np.sqrt(262.0 / f0)
                        _add(x, s0, _piano_note(f0, length, sr, r0, tau), note_vel)
        elif layer == "arp":
            center = rng.uniform(60, 68)
            sixteenths = song.beat > 60 / 115 and rng.random() < 0.5
            step_s = song.beat / (4 if sixteenths else 2)
            order = _ARP_ORDERS[rng.integers(len(_ARP_ORDERS))]
            r0, tau = rng.uniform(0.55, 0.75), rng.uniform(0.15, 0.45)
            ring = rng.uniform(1.0, 2.5)
            per_bar = int(round(song.bar / step_s))
            for bar in range(song.n_bars):
                chord = _voicing(song.chord(bar, sevenths), center)
                tones = [m for m in chord + [m + 12 for m in chord] if m <= 84]
                for j in range(per_bar):
                    s0 = song.sample(song.time(bar * _BEATS_PER_BAR) + j * step_s + rng.normal(0, 0.003))
                    length = int((step_s * ring + 0.03) * sr)
                    m = tones[order[j % len(order)] % len(tones)]
                    vel = rng.uniform(0.7, 1.0) * (1.0 if j % (per_bar // 4) == 0 else 0.8)
                    if s0 >= n or s0 + length <= 0:
                        continue
                    _add(x, s0, _piano_note(float(_midi_hz(m)), length, sr, r0, tau), vel)
        else:  # pad: two detuned bright oscillators per note, slow attack, tremolo
            center = rng.uniform(55, 62)
            attack, release = rng.uniform(0.05, 0.3), rng.uniform(0.15, 0.4)
            detune = rng.uniform(4, 10) / 1200
            r0 = rng.uniform(0.7, 0.85)
            trem_rate, trem_depth = rng.uniform(0.2, 1.5), rng.uniform(0.0, 0.15)
            for bar in range(song.n_bars):
                s0 = song.sample(song.time(bar * _BEATS_PER_BAR))
                length = int((song.bar + release) * sr)
                trem_phase = rng.uniform(0, _TWO_PI)
                if s0 >= n or s0 + length <= 0:
                    continue
                t = np.arange(length, dtype=np.float32) / sr
                env = 1.0 + trem_depth * np.sin(_TWO_PI * trem_rate * t + trem_phase)
                notes = _voicing(song.chord(bar, sevenths), center)
                for m in notes:
                    f0 = float(_midi_hz(m))
                    k = _n_harmonics(f0 * (1 + detune), sr, 5000.0)
                    tone = sum(_dsf(_phase(f0 * 2 ** (d * detune), length, sr), k, r0) for d in (-1, 1))
                    _add(x, s0, _fade(tone * env, int(attack * sr), int(release * sr)), 0.5 / np.sqrt(len(notes)))
        x = _unit_rms(x) * np.float32(1.0 if layer == primary else rng.uniform(0.4, 0.8))
        _pan_add(stereo, x, rng.uniform(-0.6, 0.6), int(rng.uniform(0, 0.0006) * sr))
        dry += x
    return stereo + _reverb(dry, sr, rng, rt60=rng.uniform(0.4, 1.2), wet=rng.uniform(0.1, 0.25))


# --------------------------------------------------------------------------- drums

_KICK_PATTERNS = ((0, 8), (0, 8, 10), (0, 6, 8), (0, 7, 8), (0, 3, 8, 11), (0, 10), (0, 8, 14))


def _drum_kit(params: np.random.Generator, noise: np.random.Generator, sr: int) -> dict[str, list[np.ndarray]]:
    """One-shot samples (float32 (time,), peak 1), a few variants per piece. Tunings
    and decays come from ``params``, noise and partial phases from ``noise``."""
    def t_axis(seconds):
        return np.arange(int(seconds * sr), dtype=np.float32) / sr

    def swept_sine(t, f_start, f_end, tau_f, tau_a):
        freq = f_end + (f_start - f_end) * np.exp(-t / tau_f)
        return np.sin(_phase(freq, t.size, sr)) * np.exp(-t / tau_a)

    kit: dict[str, list[np.ndarray]] = {}
    t = t_axis(0.5)
    f_start, f_end, tau = params.uniform(110, 200), params.uniform(42, 60), params.uniform(0.12, 0.25)
    click = _band_noise(noise, t.size, sr, 500, 6000) * np.exp(-t / 0.003)
    kick = swept_sine(t, f_start, f_end, 0.035, tau) + 0.3 * click
    kit["kick"] = [_fade(np.tanh(1.5 * kick) / np.tanh(1.5), int(0.0005 * sr), int(0.05 * sr))]

    t = t_axis(0.4)
    body_f, tau_noise = params.uniform(170, 240), params.uniform(0.07, 0.16)
    body = (np.sin(_TWO_PI * body_f * t) + 0.5 * np.sin(_TWO_PI * 1.63 * body_f * t)) * np.exp(-t / 0.05)
    kit["snare"] = [_fade(0.5 * body + 0.5 * _band_noise(noise, t.size, sr, 900, 10000) * np.exp(-t / tau_noise),
                          int(0.0005 * sr), int(0.05 * sr)) for _ in range(3)]

    # Hi-hats: high-passed noise plus the upper odd harmonics (those in the hat's
    # band, below 0.45 sr) of a cluster of inharmonic square waves.
    squares = np.array([205.3, 304.4, 369.6, 522.7, 540.0, 800.0]) * params.uniform(1.5, 2.5)

    def hat(seconds, tau):
        t = t_axis(seconds).astype(np.float64)
        lo = min(7000.0, 0.35 * sr)
        partials = [(k * f, 1.0 / k) for f in squares for k in range(1, int(0.45 * sr / f) + 1, 2) if k * f > 0.8 * lo]
        x = _band_noise(noise, t.size, sr, lo, 16000)
        if partials:
            freqs, amps = np.array(partials).T
            metal = amps @ np.sin(_TWO_PI * np.outer(freqs, t) + noise.uniform(0, _TWO_PI, (len(freqs), 1)))
            x = x + 0.5 * _unit_rms(metal.astype(np.float32))
        return _fade((x * np.exp(-t / tau)).astype(np.float32), int(0.0005 * sr), int(0.01 * sr))

    closed_tau, open_tau = params.uniform(0.015, 0.04), params.uniform(0.15, 0.3)
    kit["hat"] = [hat(0.15, closed_tau) for _ in range(3)]
    kit["open"] = [hat(0.6, open_tau) for _ in range(2)]
    t = t_axis(2.0)
    kit["crash"] = [_fade(_band_noise(noise, t.size, sr, 3500, 16000) * np.exp(-t / params.uniform(0.5, 0.9)),
                          int(0.001 * sr), int(0.1 * sr))]
    t = t_axis(0.5)
    kit["tom"] = [_fade(swept_sine(t, f * 1.5, f, 0.05, 0.2), int(0.0005 * sr), int(0.05 * sr))
                  for f in (params.uniform(160, 200), params.uniform(110, 140), params.uniform(80, 100))]
    for samples in kit.values():
        for i, x in enumerate(samples):
            samples[i] = (x / np.max(np.abs(x))).astype(np.float32)
    return kit


def _render_drums(song: _Song, rng: np.random.Generator, nrng: np.random.Generator) -> np.ndarray:
    """Drum kit on a per-bar varied 16th-note pattern; stereo (2, n) float32."""
    sr, n = song.sr, song.n
    kick_a, kick_b = (_KICK_PATTERNS[i] for i in rng.choice(len(_KICK_PATTERNS), 2, replace=False))
    snare_steps = (8,) if rng.random() < 0.15 else (4, 12)
    hat_steps = (tuple(range(16)) if song.beat > 60 / 120 and rng.random() < 0.4
                 else tuple(range(0, 16, 2)))
    open_step = 14 if rng.random() < 0.4 else None

    hits = []  # (piece, variant, step position in 16ths from bar 0, velocity)
    for bar in range(song.n_bars):
        base = bar * 16
        pattern = set(kick_a if rng.random() < 0.7 else kick_b)
        if rng.random() < 0.15:
            pattern.add(int(rng.choice([3, 6, 11, 14, 15])))
        fill = bar % 4 == 3 and rng.random() < 0.5
        for s in sorted(pattern):
            if not (fill and s >= 12):
                hits.append(("kick", 0, base + s, (1.0 if s == 0 else 0.9) * rng.uniform(0.85, 1.0)))
        for s in snare_steps:
            if not (fill and s >= 12):
                hits.append(("snare", rng.integers(3), base + s, rng.uniform(0.85, 1.0)))
        for s in range(16):
            if s not in snare_steps and s not in pattern and rng.random() < 0.06:  # ghost notes
                hits.append(("snare", rng.integers(3), base + s, rng.uniform(0.15, 0.3)))
        for s in hat_steps:
            if s == open_step and not fill:
                hits.append(("open", rng.integers(2), base + s, rng.uniform(0.6, 0.8)))
            elif not (fill and s >= 12):
                accent = 1.0 if s % 4 == 0 else (0.75 if s % 2 == 0 else 0.55)
                hits.append(("hat", rng.integers(3), base + s, accent * rng.uniform(0.75, 1.0)))
        if fill:
            for s in range(12, 16):
                piece = "snare" if rng.random() < 0.5 else "tom"
                variant = rng.integers(3)
                hits.append((piece, variant, base + s, 0.6 + 0.1 * (s - 12) * rng.uniform(0.8, 1.0)))
        if bar % 4 == 0 and rng.random() < 0.6:
            hits.append(("crash", 0, base, rng.uniform(0.7, 0.9)))

    kit = _drum_kit(rng, nrng, sr)
    pieces = {name: np.zeros(n, dtype=np.float32) for name in kit}
    gains = {"kick": 1.0, "snare": 0.8, "hat": 0.35, "open": 0.25, "crash": 0.3, "tom": 0.7}
    for piece, variant, pos, vel in hits:
        s0 = song.sample(song.time(pos / 4) + rng.normal(0, 0.002))
        _add(pieces[piece], s0, kit[piece][variant], gains[piece] * vel)

    pans = {"kick": rng.uniform(-0.05, 0.05), "snare": rng.uniform(-0.15, 0.15), "crash": rng.uniform(-0.5, 0.5),
            "tom": rng.uniform(-0.4, 0.4)}
    pans["hat"] = pans["open"] = rng.choice([-1, 1]) * rng.uniform(0.2, 0.5)
    out = np.zeros((2, n), dtype=np.float32)
    for name, x in pieces.items():
        _pan_add(out, x, pans[name], int(rng.uniform(0, 0.0005) * sr))
    room = pieces["snare"] + pieces["tom"]
    return out + _reverb(room, sr, rng, rt60=rng.uniform(0.3, 0.8), wet=rng.uniform(0.1, 0.3))


# --------------------------------------------------------------------------- vocals


@dataclass
class _Note:
    start: float   # seconds (excerpt time)
    end: float
    midi: int
    vowel: int
    velocity: float
    legato: bool   # runs into the next note of its phrase without a gap


def _melody(song: _Song, rng: np.random.Generator) -> list[list[_Note]]:
    """Phrases of 1-2 bars in the key, separated by rests of 2-6 beats."""
    lo = int(rng.integers(52, 61))
    pitches = song.scale_pitches(lo, min(lo + 14, 74))
    durations, weights = (0.5, 1.0, 1.5, 2.0), (0.3, 0.35, 0.15, 0.2)
    duration = song.n / song.sr
    first_rest = min(float(rng.choice([0, 1, 2, 4])) * song.beat, 0.25 * duration)
    cursor = np.ceil((song.shift + first_rest) / song.beat * 2) / 2   # beats, on an eighth
    idx = len(pitches) // 2
    phrases = []
    while song.time(cursor) < duration:
        end = cursor + float(rng.choice([4.0, 6.0, 7.0, 8.0]))
        notes, pos = [], cursor
        while pos < end - 0.25:
            d = min(float(rng.choice(durations, p=weights)), end - pos)
            idx = int(np.clip(idx + rng.choice([-2, -1, 0, 1, 2], p=[0.15, 0.3, 0.1, 0.3, 0.15]),
                              0, len(pitches) - 1))
            in_bar = pos % _BEATS_PER_BAR
            last = pos + d >= end - 0.25
            if (in_bar in (0.0, 2.0) and rng.random() < 0.7) or last:   # chord tone on strong beats
                chord = song.chord(int(pos // _BEATS_PER_BAR))
                tones = np.flatnonzero(np.isin(pitches % 12, chord))
                idx = int(tones[np.argmin(np.abs(tones - idx))])
            legato = not last and rng.random() > 0.15
            sung = d if legato else max(0.25, d * rng.uniform(0.6, 0.85))
            notes.append(_Note(song.time(pos), song.time(pos + sung), int(pitches[idx]),
                               int(rng.integers(len(_VOWELS))), rng.uniform(0.75, 1.0), legato))
            pos += d
        phrases.append(notes)
        cursor = np.ceil((end + float(rng.choice([2.0, 3.0, 4.0, 4.0, 6.0]))) * 2) / 2
    return phrases


def _vowel_amplitudes(f0: float, n_harm: int, vowel: int, scale: float, tilt: float) -> np.ndarray:
    """Harmonic amplitudes (n_harm,) float32 of a sung vowel: a glottal source falling
    12 dB/octave (plus ``tilt`` dB/oct), lip radiation (+6 dB/oct) and a cascade of
    five formant resonators; normalised to unit sum of squares."""
    k = np.arange(1, n_harm + 1, dtype=np.float64)
    f = k * f0
    gain = k ** (-2.0 + tilt / 6.02) * k
    for fc, bw in _VOWELS[vowel] + _UPPER_FORMANTS:
        fc, bw = fc * scale, bw * scale
        gain *= fc * fc / np.sqrt((fc * fc - f * f) ** 2 + (bw * f) ** 2)
    return (gain / np.sqrt(np.sum(gain ** 2))).astype(np.float32)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Causal moving average over ``width`` samples, the first value held before x; float64."""
    c = np.cumsum(np.concatenate([np.full(width, x[0], dtype=np.float64), x]))
    return (c[width:] - c[:-width]) / width


def _render_vocals(song: _Song, rng: np.random.Generator, nrng: np.random.Generator) -> np.ndarray:
    """A sung melody in phrases: stereo (2, n) float32, silent between phrases except
    for reverb tails and the occasional breath."""
    sr, n = song.sr, song.n
    phrases = _melody(song, rng)
    formant_scale = rng.uniform(1.0, 1.18)
    tilt = rng.uniform(-3.0, 1.0)
    vib_rate, vib_depth = rng.uniform(5.0, 6.0), rng.uniform(0.3, 0.6)   # Hz, semitones
    vib_delay, vib_onset = rng.uniform(0.08, 0.2), rng.uniform(0.2, 0.5)   # s
    glide = max(1, int(rng.uniform(0.03, 0.08) * sr))
    xfade, attack, release = int(0.03 * sr), int(rng.uniform(0.03, 0.08) * sr), int(rng.uniform(0.05, 0.12) * sr)
    breathiness = rng.uniform(0.01, 0.04)
    pan, delay = rng.uniform(-0.15, 0.15), rng.uniform(0, 0.0003)
    rt60, wet = rng.uniform(0.8, 1.6), rng.uniform(0.12, 0.25)
    chunk = 16384

    out = np.zeros(n, dtype=np.float32)
    for notes in phrases:
        # Per phrase: inhale (length s, gain) or None, vibrato phase, pitch drift points.
        inhale = (rng.uniform(0.15, 0.3), rng.uniform(0.01, 0.025)) if rng.random() < 0.6 else None
        vib_phase = rng.uniform(0, _TWO_PI)
        p0 = song.sample(notes[0].start) - xfade
        p1 = song.sample(notes[-1].end) + release + xfade
        length = p1 - p0
        n_drift = int((notes[-1].end - notes[0].start) * 3) + 4
        drift_points = rng.normal(0, 0.06, n_drift)
        if p0 >= n or p1 <= 0:
            continue
        starts = [song.sample(note.start) - p0 for note in notes]
        ends = [song.sample(note.end) - p0 for note in notes]

        # Pitch contour (semitones): held notes, glides, delayed vibrato, slow drift.
        # The vibrato ramp restarts at each onset; like the note steps it is smoothed
        # over the glide time so that neither pitch nor the swell below jumps.
        bounds = np.array(starts[1:] + [length])
        counts = np.diff(np.concatenate([[0], bounds]))
        t = np.arange(length) / sr
        onset = np.repeat(t[[0] + starts[1:]], counts)
        onset[:starts[0]] = t[starts[0]]
        contour = _smooth(np.repeat([note.midi for note in notes], counts), glide)
        depth = _smooth(np.clip((t - onset - vib_delay) / vib_onset, 0.0, 1.0), glide)
        drift = np.interp(t, np.linspace(0, t[-1], n_drift), drift_points)
        vib = np.sin(_TWO_PI * vib_rate * t + 0.3 * np.sin(_TWO_PI * 0.7 * t) + vib_phase)
        f0 = _midi_hz(contour + vib_depth * depth * vib + drift)
        phase = _phase(f0, length, sr)

        voice = np.zeros(length, dtype=np.float32)
        env = np.zeros(length, dtype=np.float32)
        for i, note in enumerate(notes):
            consonant = None   # at the syllable boundary: (kind, length s, band low edge Hz)
            if i > 0 and rng.random() < 0.35:
                if rng.random() < 0.6:
                    consonant = ("fricative", rng.uniform(0.04, 0.09), rng.uniform(2500, 4500))
                else:
                    consonant = ("plosive", rng.uniform(0.008, 0.02), 1000.0)
            joined_before = i > 0 and notes[i - 1].legato
            a = starts[i] - xfade // 2 if joined_before else starts[i]
            b = ends[i] + xfade // 2 if note.legato else ends[i] + release
            a, b = max(a, 0), min(b, length)
            if b <= a:
                continue
            w = np.ones(b - a, dtype=np.float32)
            _fade(w, xfade if joined_before else attack, xfade if note.legato else release)
            w *= note.velocity * (0.88 + 0.12 * depth[a:b]).astype(np.float32)   # swell with the vibrato
            n_harm = _n_harmonics(float(f0[a:b].max()), sr, 8000.0)
            amps = _vowel_amplitudes(float(_midi_hz(note.midi)), n_harm, note.vowel, formant_scale, tilt)
            k = np.arange(1, n_harm + 1, dtype=np.float32)
            for c0 in range(a, b, chunk):
                c1 = min(c0 + chunk, b)
                voice[c0:c1] += w[c0 - a:c1 - a] * (amps @ np.sin(np.outer(k, phase[c0:c1])))
            env[a:b] += w
            if consonant is not None:
                kind, seconds, low = consonant
                m = max(1, int(seconds * sr))
                if kind == "fricative":
                    burst = _band_noise(nrng, m, sr, low, 10000) * np.sin(np.linspace(0, np.pi, m))
                    _add(voice, starts[i] - m // 2, burst, 0.12 * note.velocity)
                else:
                    burst = _band_noise(nrng, m, sr, low, 8000) * np.exp(-np.arange(m) / (0.3 * m))
                    _add(voice, starts[i], burst, 0.25 * note.velocity)

        # Breath noise: aspiration during voicing and sometimes an inhale before the phrase.
        voice += breathiness * _band_noise(nrng, length, sr, 1000, 6000) * env
        _add(out, p0, voice)
        if inhale is not None:
            m = max(1, int(inhale[0] * sr))
            breath = _band_noise(nrng, m, sr, 400, 2500) * np.sin(np.linspace(0, np.pi, m)) ** 2
            _add(out, song.sample(notes[0].start) - m - int(0.05 * sr), breath, inhale[1])

    stereo = _pan_add(np.zeros((2, n), np.float32), out, pan, int(delay * sr))
    return stereo + _reverb(out, sr, rng, rt60=rt60, wet=wet)
