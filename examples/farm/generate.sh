#!/bin/sh
# Regenerates the farm documents in this folder from job.yaml: each is exactly what
# `jitrender submit --dry-run` prints (tests/test_submit.py runs these lines and compares).
set -eu
cd "$(dirname "$0")"
IMAGE=us-docker.pkg.dev/my-studio/render/jitrender:0.1.0
jitrender submit job.yaml --farm slurm --chunk 5 --parallelism 20 --job-path /mnt/jobs/sh010/job.yaml --dry-run > slurm.sbatch
jitrender submit job.yaml --farm kubernetes --chunk 5 --parallelism 20 --image "$IMAGE" --memory 56GiB --dry-run > k8s-indexed-job.yaml
jitrender submit job.yaml --farm gcp-batch --chunk 5 --parallelism 20 --image "$IMAGE" --memory 56GiB --job-path gs://my-studio-jobs/sh010/job.yaml --dry-run > gcp-batch.json
jitrender submit job.yaml --farm aws-batch --chunk 5 --queue render-spot --image 123456789012.dkr.ecr.us-west-2.amazonaws.com/render/jitrender:0.1.0 --memory 56GiB --job-path /mnt/jobs/sh010/job.yaml --dry-run > aws-batch.json
jitrender submit job.yaml --farm openjd --chunk 5 --memory 32GiB --cpus 8 --job-path /mnt/jobs/sh010/job.yaml --bundle-dir openjd --dry-run > openjd/template.yaml
