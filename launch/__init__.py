"""Launchers for TPU pods (`python -m launch.tpu_pod`) and multi-node GPU clusters (`python -m launch.gpu_cluster`).

Run them from the repository root. Each builds the exact shell commands of a job and either prints them
(`--dry-run`, copy-pasteable) or runs them one after another, stopping at the first failure.
"""
