//! Zero-downtime upgrades, the process part: the running process starts its own executable
//! again and hands it its listening sockets in systemd's socket-activation format, plus a
//! readiness pipe ([`spawn()`]); the new process tells it when it is ready ([`link`]), and the
//! old one then drains and exits. The runner's integration (on SIGHUP) uses these items.

mod link;
mod spawn;

pub(crate) use link::{parent, Parent};
pub(crate) use spawn::{current_program, spawn, Command, Inherit, Readiness};
