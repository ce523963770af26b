//! Everything that can go wrong in the guard, each with the sentence a person reads.

use crate::checkpoint::CheckpointError;
use crate::git::{CommandError, GitError};
use crate::health::HealthError;
use supervisor::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Health(#[from] HealthError),
    /// A precondition does not hold; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error("cannot write the journal {path}: {source}")]
    Journal { path: String, source: std::io::Error },
    #[error("tests failed ({source}); log: {log}")]
    Tests { source: CommandError, log: String },
    #[error("merge failed, {branch} left at {commit}: {source}")]
    Merge { branch: String, commit: String, source: GitError },
    #[error("cannot save the checkpoint: {0}")]
    SaveCheckpoint(CheckpointError),
    #[error("not healthy for {stable_for} within {timeout}: {last_problem}")]
    Unhealthy { stable_for: String, timeout: String, last_problem: String },
    #[error("restart failed: {0}")]
    RestartFailed(Box<GuardError>),
    #[error("new version unhealthy: {0}")]
    NewVersionUnhealthy(Box<GuardError>),
    /// Why a rollback happened, as journaled (for a rollback resumed after a crash).
    #[error("{0}")]
    Journaled(String),
    #[error("{why}; after the rollback the old version is not healthy either: {after}")]
    RollbackFailed { why: Box<GuardError>, after: Box<GuardError> },
}
