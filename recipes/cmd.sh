# Where the heavy steps (train, separate, score) run; sourced by the recipes.
#   cmd=local  (default) run on this machine
#   cmd=slurm  one Slurm job step per command, e.g. on a GPU node; edit the resources below:
#              bash recipes/run_all.sh --cmd slurm --musdb /data/musdb18 --preset paper
case "${cmd:-local}" in
  local) run_cmd=() ;;
  slurm) run_cmd=(srun --job-name=mss --gres=gpu:1 --cpus-per-task=8 --mem=48G --time=48:00:00) ;;
  *) echo "unknown --cmd $cmd (local or slurm)" >&2; exit 2 ;;
esac
