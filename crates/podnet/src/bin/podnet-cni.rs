//! `podnet-cni`: the CNI plugin binary. Executed by the container runtime with the CNI
//! environment and the network configuration on stdin; all logic is in `podnet_cni`
//! (stdin is read there, bounded by `podnet_cni::MAX_STDIN`).

use std::io::Write;

fn main() {
    let (out, rc) = podnet_cni::run_reader(|k| std::env::var(k).ok(), std::io::stdin().lock());
    if !out.is_empty() {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(out.as_bytes());
        let _ = o.write_all(b"\n");
        let _ = o.flush();
    }
    std::process::exit(rc);
}
