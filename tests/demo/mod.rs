//! The demo example as a child process: started with both ports on `127.0.0.1:0`, and the
//! addresses it logs. Shared by the `process*` test binaries; what one leaves unused is not a
//! warning there.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;

use crate::common::process::{example, Proc};

/// The demo with both ports on `127.0.0.1:0`, then `args` (a flag given twice: the last wins).
pub fn demo(args: &[&str]) -> Proc {
    demo_with(args, |_| {})
}

/// Like [`demo`], with the command changed by `configure` first.
pub fn demo_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Proc {
    let mut all = vec!["--api-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Proc::spawn_with(&example("demo"), &all, configure)
}

/// The health endpoint's address, from the line it logs when it starts listening.
pub fn health_addr(p: &mut Proc) -> SocketAddr {
    let line = p.wait_for("health endpoint: listening on http://");
    line.rsplit("http://").next().unwrap().parse().unwrap()
}

/// The API's address, from the line it logs when it starts listening (after the health
/// endpoint's: read that one first).
pub fn api_addr(p: &mut Proc) -> SocketAddr {
    let line = p.wait_for("api: listening on http://");
    line.rsplit("http://").next().unwrap().parse().unwrap()
}
