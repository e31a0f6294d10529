//! What every layer reports: Prometheus `metrics`, and `gpu` memory read through NVML.

#[cfg(feature = "gpu")]
pub mod gpu;
pub mod metrics;
