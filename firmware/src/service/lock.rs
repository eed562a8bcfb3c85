//! One `usrbd serve` per device name: an exclusive `flock` on
//! `/run/usrbd/<name>.lock`, taken before anything else, so a second instance
//! refuses before it loads an image, touches the USB gadget or the LEDs.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::ServiceError;

/// Held for the life of the server; the kernel drops the lock with the fd,
/// even on SIGKILL.
pub(super) struct InstanceLock {
    _file: File,
}

pub(super) fn take(dir: &Path, name: &str) -> Result<InstanceLock, ServiceError> {
    let path = dir.join(format!("{name}.lock"));
    let io = |what: &'static str, path: &Path| {
        let path: PathBuf = path.to_owned();
        move |source| ServiceError::Lock { what, path, source }
    };
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io("creating directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io("setting permissions of", dir))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io("opening", &path))?;
    // SAFETY: flock on an fd we own; no memory involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(ServiceError::AlreadyServed {
                name: name.to_owned(),
                lock: path,
            });
        }
        return Err(io("locking", &path)(e));
    }
    Ok(InstanceLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_of_the_same_name_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = take(dir.path(), "usrbd0").unwrap();
        let e = take(dir.path(), "usrbd0").err().unwrap().to_string();
        assert!(e.contains("already") && e.contains("usrbd0"), "{e}");
        assert!(take(dir.path(), "usrbd1").is_ok());
        drop(first);
        assert!(take(dir.path(), "usrbd0").is_ok());
    }
}
