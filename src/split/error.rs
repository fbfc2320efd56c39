use thiserror::Error;

/// Why a [`Split`](super::Split) could not be built or a change to it was
/// refused. A refused change leaves the weights as they were.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SplitError {
    /// The split has no targets.
    #[error("a split needs at least one target")]
    NoTargets,
    /// Two targets share a name.
    #[error("target `{0}` is named twice")]
    DuplicateTarget(String),
    /// Every weight is zero, so no target could be chosen.
    #[error("at least one target must have a weight above zero")]
    AllWeightsZero,
    /// A target name is empty, too long, or holds characters other than
    /// visible ASCII (it must fit in a header value).
    #[error("invalid target name `{0}`: use 1 to 64 visible ASCII characters")]
    InvalidTargetName(String),
    /// A name given to the handle is not one of the split's targets.
    #[error("unknown target `{0}`")]
    UnknownTarget(String),
    /// A new set of weights left out a target; a set names every target.
    #[error("the new weights do not name target `{0}`")]
    MissingTarget(String),
    /// `rollback` was called with no earlier weights to return to.
    #[error("there is no earlier set of weights to roll back to")]
    NothingToRollBack,
}
