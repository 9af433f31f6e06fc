"""The Slurm spawner: each user's server a batch job on a compute node, run as the user
(batchspawner's SlurmSpawner, on minihub's spawner seam)."""
