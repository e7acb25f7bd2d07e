//! Where an ADD spends its time, step by step (`PODNET_CNI_TIMING=1`).

/// Step timings on stderr when `PODNET_CNI_TIMING` is set: where an ADD spends its time.
pub(crate) struct Timing(Option<std::time::Instant>);

impl Timing {
    pub(crate) fn start() -> Timing {
        Timing(std::env::var_os("PODNET_CNI_TIMING").map(|_| std::time::Instant::now()))
    }

    pub(crate) fn mark(&self, step: &str) {
        if let Some(t0) = self.0 {
            eprintln!(
                "podnet-cni timing: {:>6} µs  {step}",
                t0.elapsed().as_micros()
            );
        }
    }
}
