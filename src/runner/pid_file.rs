//! The PID file ([`Runner::pid_file`](super::Runner::pid_file)): the process's id, written
//! atomically once the run phase begins, removed at the end unless an upgrade's new process
//! has written its own.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Phase};

use super::health::RUNNER_CHECK;

/// The temporary file `path` is written through: in its directory, so that the rename is
/// atomic, and named after this process, so that two processes never write the same one.
fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_else(|| "pid".as_ref());
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(temporary)
}

/// Writes this process's id and a line end to `path`, through a temporary file renamed over
/// it: a reader sees the old file or the new one, whole.
///
/// # Errors
///
/// The errors of writing the temporary file and renaming it, as an error of the runner's start
/// that names the file.
pub(super) fn write(path: &Path) -> Result<(), Error> {
    let fail = |e: io::Error| {
        Error::msg(format!("cannot write the PID file {}: {e}", path.display()))
            .in_service(RUNNER_CHECK, Phase::Start)
    };
    if path.file_name().is_none() {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no file",
        )));
    }
    let temporary = temporary(path);
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(fail(e));
    }
    Ok(())
}

/// Removes `path` if it still holds this process's id (an upgrade's new process, or another
/// instance, may have written its own since). Errors are logged, never returned: the run is
/// over.
pub(super) fn remove_if_ours(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        if let Err(e) = std::fs::remove_file(path) {
            crate::relay::warn!("cannot remove the PID file {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lifecycle-pid-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("demo.pid")
    }

    #[test]
    fn the_file_holds_the_id_and_no_temporary_is_left() {
        let path = scratch("write");
        std::fs::write(&path, "1\n").unwrap();
        write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        let dir = path.parent().unwrap();
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        remove_if_ours(&path);
        assert!(!path.exists());
        std::fs::remove_dir(dir).unwrap();
    }

    #[test]
    fn a_file_another_process_wrote_is_left_alone() {
        let path = scratch("theirs");
        std::fs::write(&path, "1\n").unwrap();
        remove_if_ours(&path);
        assert!(path.exists());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_directory_that_does_not_exist_is_an_error_naming_the_file() {
        let path = Path::new("/nonexistent-lifecycle-dir/demo.pid");
        let e = write(path).unwrap_err().to_string();
        assert!(e.contains("/nonexistent-lifecycle-dir/demo.pid"), "{e}");
    }
}
