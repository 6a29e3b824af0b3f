//! The listening sockets the process obtained by name ([`listener`](super::listener),
//! [`take_listener`](super::take_listener)), which an upgrade hands to the new process under
//! the same names.
//!
//! A record holds a descriptor's number and the identity (device and inode) of the socket it
//! named, never the socket itself: the program owns its listeners and closes them when it
//! likes, and a record whose number no longer names that socket (closed, or the number reused
//! by another file) is dead and forgotten. So nothing here keeps a port bound that the program
//! let go of, and a listener obtained again under a name replaces the record of the last.

#[cfg(unix)]
use std::os::fd::{OwnedFd, RawFd};

#[cfg(unix)]
use parking_lot::Mutex;

/// One listener obtained by name.
#[cfg(unix)]
struct Record {
    name: String,
    fd: RawFd,
    id: (libc::dev_t, libc::ino_t),
}

/// The records, newest last; one per name.
#[cfg(unix)]
static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// The device and inode of the file `fd` names.
#[cfg(unix)]
fn identity(fd: RawFd) -> Option<(libc::dev_t, libc::ino_t)> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat(2) writes only into `stat`; a number that names no open file is an error.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    Some((stat.st_dev, stat.st_ino))
}

/// Records that the listener `fd` was obtained under `name`, replacing the record of an
/// earlier listener of that name.
#[cfg(unix)]
pub(crate) fn record(name: &str, fd: RawFd) {
    let Some(id) = identity(fd) else {
        return;
    };
    let mut records = RECORDS.lock();
    records.retain(|r| r.name != name && identity(r.fd) == Some(r.id));
    records.push(Record {
        name: name.to_owned(),
        fd,
        id,
    });
}

/// Elsewhere nothing is handed over.
#[cfg(not(unix))]
pub(crate) fn record(_name: &str, _fd: i32) {}

/// Every listener still open under its name, each as a descriptor of its own (a duplicate,
/// close-on-exec), so that the program closing its listener meanwhile changes nothing for the
/// caller; dead records are forgotten.
#[cfg(unix)]
pub(crate) fn live() -> Vec<(String, OwnedFd)> {
    use std::os::fd::FromRawFd;

    let mut records = RECORDS.lock();
    records.retain(|r| identity(r.fd) == Some(r.id));
    (records.iter())
        .filter_map(|r| {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) only creates a new descriptor, owned below.
            let dup = unsafe { libc::fcntl(r.fd, libc::F_DUPFD_CLOEXEC, 3) };
            if dup < 0 {
                let e = std::io::Error::last_os_error();
                crate::relay::warn!("cannot hand over the listener `{}`: {e}", r.name);
                return None;
            }
            // The number may have been closed and reused between the check and the dup.
            if identity(dup) != Some(r.id) {
                // SAFETY: `dup` was just created here and is owned by no one else.
                unsafe { libc::close(dup) };
                return None;
            }
            // SAFETY: `dup` is a new descriptor that nothing else owns.
            Some((r.name.clone(), unsafe { OwnedFd::from_raw_fd(dup) }))
        })
        .collect()
}

#[cfg(all(test, unix))]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    use super::*;

    fn names() -> Vec<String> {
        live().into_iter().map(|(name, _)| name).collect()
    }

    #[test]
    fn a_listener_is_handed_over_while_open_and_forgotten_once_closed() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        record("named-test-a", a.as_raw_fd());
        assert!(names().contains(&"named-test-a".to_owned()));
        let handed = live();
        let (_, fd) = handed.iter().find(|(n, _)| n == "named-test-a").unwrap();
        assert_eq!(identity(fd.as_raw_fd()), identity(a.as_raw_fd()));
        drop(a);
        assert!(!names().contains(&"named-test-a".to_owned()));
    }

    #[test]
    fn a_name_obtained_again_replaces_the_earlier_record() {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let second = TcpListener::bind("127.0.0.1:0").unwrap();
        record("named-test-b", first.as_raw_fd());
        record("named-test-b", second.as_raw_fd());
        let handed: Vec<_> = live()
            .into_iter()
            .filter(|(n, _)| n == "named-test-b")
            .collect();
        assert_eq!(handed.len(), 1);
        assert_eq!(
            identity(handed[0].1.as_raw_fd()),
            identity(second.as_raw_fd())
        );
    }
}
