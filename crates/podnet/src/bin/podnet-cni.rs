//! `podnet-cni`: the CNI plugin binary. Executed by the container runtime with the CNI
//! environment and the network configuration on stdin; all logic is in `podnet_cni`.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let (out, rc) = podnet_cni::run(|k| std::env::var(k).ok(), &stdin);
    if !out.is_empty() {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(out.as_bytes());
        let _ = o.write_all(b"\n");
        let _ = o.flush();
    }
    std::process::exit(rc);
}
