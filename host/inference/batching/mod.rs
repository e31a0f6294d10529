//! Batching, in one place: the `policy` (whether a model batches and up to how many items,
//! which queued requests join a batch, how long it waits for more), `forming` (executors
//! taking batches from the model's queue as the policy says), `assembly` (requests padded
//! and joined into one run, the outputs parted again), and `calibration` (measuring at
//! start-up whether batching pays for a model, and how fast an engine runs it alone).

pub mod assembly;
pub mod calibration;
pub(super) mod forming;
pub mod policy;
