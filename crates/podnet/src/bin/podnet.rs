//! `podnet`: the command-line tool. All of it is in `podnet_lab::app` (the lab's
//! commands) and `podnet_cli` (the commands that ask the agents).

fn main() {
    podnet_lab::app::main()
}
