//! `podnetd`: the per-node agent. All of it is in `podnet_agent` (its command line in
//! `podnet_agent::cmd`).

fn main() {
    podnet_agent::cmd::main()
}
