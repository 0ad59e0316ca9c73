"""Index jobs: the queue every replica shares (job_queue), the jobs this process runs
(manager), and watch mode, which queues a job when a repository's files change (watch,
and watch_manager: one watcher per repository across replicas). Builds on source and
store; the engine hands jobs the indexing pipeline."""
