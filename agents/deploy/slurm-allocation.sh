#!/bin/sh
# Slurm prolog/epilog: tell flopwatch which GPUs a job holds (POST /api/v1/allocations).
# Install as both Prolog and Epilog in slurm.conf (they run as root on each node):
#   Prolog=/etc/slurm/flopwatch-prolog.sh   (a symlink to this file)
#   Epilog=/etc/slurm/flopwatch-epilog.sh   (a symlink to this file)
# Configuration in /etc/flopwatch-agent/slurm.env: FLOPWATCH_SERVER, FLOPWATCH_SERVICE_TOKEN.
# It never fails the job: errors are logged to syslog and the script exits 0.
set -u
[ -r /etc/flopwatch-agent/slurm.env ] && . /etc/flopwatch-agent/slurm.env
: "${FLOPWATCH_SERVER:?}" "${FLOPWATCH_SERVICE_TOKEN:?}"

case "$(basename "$0")" in
  *epilog*) phase=end ;;
  *) phase=start ;;
esac

now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# GPUs of this job on this node, as UUIDs (CUDA_VISIBLE_DEVICES/SLURM_JOB_GPUS are indices).
gpus=""
for idx in $(echo "${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-}}" | tr ',' ' '); do
  uuid=$(nvidia-smi --query-gpu=uuid --format=csv,noheader -i "$idx" 2>/dev/null) || continue
  gpus="$gpus${gpus:+,}\"$uuid\""
done
[ -n "$gpus" ] || exit 0

began="$now"
if [ -n "${SLURM_JOB_START_TIME:-}" ]; then
  began=$(date -u -d "@$SLURM_JOB_START_TIME" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo "$now")
fi
start="\"$began\""
if [ "$phase" = start ]; then end=null; else end="\"$now\""; fi
body=$(printf '{"external_id":"slurm:%s","project":"%s","user":"%s","gpus":[%s],"start":%s,"end":%s}' \
  "$SLURM_JOB_ID" "${SLURM_JOB_ACCOUNT:-}" "${SLURM_JOB_USER:-}" "$gpus" "$start" "$end")

curl -fsS --max-time 5 --retry 3 --retry-max-time 15 \
  -H "Authorization: Bearer $FLOPWATCH_SERVICE_TOKEN" -H "Content-Type: application/json" \
  -d "$body" "$FLOPWATCH_SERVER/api/v1/allocations" >/dev/null 2>&1 \
  || logger -t flopwatch "allocation $phase for job $SLURM_JOB_ID not posted"
exit 0
