"""Run records on disk: shipped runs (package data) and the user's runs directory. No torch here."""

from .store import (
    RUNS_DIR_ENV,
    RunRecordWarning,
    iter_run_files,
    load_runs,
    read_run,
    run_path,
    save_run,
    shipped_runs_dir,
    single_gpu_run,
    user_runs_dir,
)

__all__ = [
    "RUNS_DIR_ENV",
    "RunRecordWarning",
    "iter_run_files",
    "load_runs",
    "read_run",
    "run_path",
    "save_run",
    "shipped_runs_dir",
    "single_gpu_run",
    "user_runs_dir",
]
