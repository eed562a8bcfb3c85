//! The control socket: `/run/usrbd/<name>.sock` (directory 0700, socket 0600),
//! root (or the server's own user) only. One JSON request per line, one JSON
//! response per line:
//!
//! ```text
//! {"cmd":"status"}              -> {"ok":true,"state":"serving","status":{...}}
//! {"cmd":"detach","exit":false} -> {"ok":true,"state":"safe"}
//! {"cmd":"attach"}              -> {"ok":false,"state":"serving","error":"..."}
//! {"cmd":"upgrade","binary":"/usr/bin/usrbd"}
//!                               -> {"ok":true,"state":"upgrading","status":{...}}
//! ```
//!
//! An accepted upgrade answers before the server gives the device up and
//! execs the new binary; `usrbd upgrade` then polls `status` until a new
//! `instance` serves.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{debug, warn};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde::{Deserialize, Serialize};

use crate::config::SOCKET_DIR;
use crate::error::IpcError;

/// The longest request line; real ones are a few dozen bytes.
const MAX_LINE: u64 = 4096;
/// How long a connection may stay silent.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Detach {
        /// Exit the server once detached.
        #[serde(default)]
        exit: bool,
    },
    Attach,
    /// Hand the device to a new binary (execve, same pid and arguments).
    Upgrade {
        /// The binary to exec; the server's own executable path if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<PathBuf>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// The service state after the request.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// A response, and whom to tell once it is written: an upgrade execs the new
/// binary only after its client has the answer (the exec ends the thread that
/// writes it).
pub struct Reply {
    pub response: Response,
    pub written: Option<Sender<()>>,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply {
            response,
            written: None,
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IpcError + 'a {
    move |source| IpcError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Binds the socket: creates its directory (0700 when it is ours), replaces a stale
/// socket left by a dead server, refuses one a live server answers on.
pub fn bind(path: &Path) -> Result<UnixListener, IpcError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting permissions of", dir))?;
        } else if dir == Path::new(SOCKET_DIR) {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting permissions of", dir))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(IpcError::Io {
                what: "another usrbd server listens on",
                path: path.to_owned(),
                source: std::io::Error::from_raw_os_error(libc::EADDRINUSE),
            });
        }
        fs::remove_file(path).map_err(io_err("removing stale socket", path))?;
    }
    let l = UnixListener::bind(path).map_err(io_err("binding", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io_err("setting permissions of", path))?;
    Ok(l)
}

/// Answers requests on `listener` with `handler`, one thread per connection (a
/// detach may take a while; a status must still be answered meanwhile).
pub fn spawn_server(
    listener: UnixListener,
    handler: Arc<dyn Fn(Request) -> Reply + Send + Sync>,
) -> std::io::Result<()> {
    thread::Builder::new().name("ipc".into()).spawn(move || {
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    warn!("control socket: accept: {e}");
                    continue;
                }
            };
            let h = Arc::clone(&handler);
            let spawned = thread::Builder::new()
                .name("ipc-conn".into())
                .spawn(move || handle_conn(conn, &*h));
            if let Err(e) = spawned {
                warn!("control socket: {e}");
            }
        }
    })?;
    Ok(())
}

fn handle_conn(conn: UnixStream, handler: &dyn Fn(Request) -> Reply) {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match getsockopt(&conn, PeerCredentials) {
        Ok(c) if c.uid() == 0 || c.uid() == me => {}
        Ok(c) => {
            warn!("control socket: refusing uid {}", c.uid());
            return;
        }
        Err(e) => {
            warn!("control socket: peer credentials: {e}");
            return;
        }
    }
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(e) => {
            warn!("control socket: {e}");
            return;
        }
    };
    // A client that connects and says nothing, or sends a line without an
    // end, must not hold a thread and its buffer for ever.
    if let Err(e) = conn.set_read_timeout(Some(READ_TIMEOUT)) {
        warn!("control socket: {e}");
        return;
    }
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                debug!("control socket: {e}");
                return;
            }
        }
        if !line.ends_with('\n') && line.len() as u64 >= MAX_LINE {
            warn!("control socket: request longer than {MAX_LINE} bytes; closing");
            let resp = Response {
                ok: false,
                state: String::new(),
                error: Some(format!("request longer than {MAX_LINE} bytes")),
                status: None,
            };
            if let Ok(mut text) = serde_json::to_string(&resp) {
                text.push('\n');
                let _ = writer.write_all(text.as_bytes());
            }
            return;
        }
        if line.trim().is_empty() {
            continue;
        }
        let Reply {
            response: resp,
            written,
        } = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                debug!("control socket: {req:?}");
                handler(req)
            }
            Err(e) => Response {
                ok: false,
                state: String::new(),
                error: Some(format!("bad request: {e}")),
                status: None,
            }
            .into(),
        };
        let sent = serde_json::to_string(&resp).ok().is_some_and(|mut text| {
            text.push('\n');
            writer.write_all(text.as_bytes()).is_ok()
        });
        // Written or not: a client that went away must not hold the upgrade.
        if let Some(w) = written {
            let _ = w.send(());
        }
        if !sent {
            return;
        }
    }
}

/// The socket to talk to: `explicit`, else the only `*.sock` in /run/usrbd.
pub fn find_socket(explicit: Option<&Path>) -> Result<PathBuf, IpcError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let dir = Path::new(SOCKET_DIR);
    let mut socks: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            // A server killed with SIGKILL leaves its socket behind; skip those.
            .filter(|p| UnixStream::connect(p).is_ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    socks.sort();
    match socks.len() {
        0 => Err(IpcError::NoServer {
            dir: dir.to_owned(),
        }),
        1 => Ok(socks.remove(0)),
        _ => Err(IpcError::Ambiguous {
            list: socks.iter().map(|p| p.display().to_string()).collect(),
        }),
    }
}

/// Sends one request and waits for its response.
pub fn call(socket: &Path, req: &Request) -> Result<Response, IpcError> {
    let mut s = UnixStream::connect(socket).map_err(io_err("connecting to", socket))?;
    let mut line = serde_json::to_string(req).map_err(|e| IpcError::Protocol(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(io_err("writing to", socket))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(io_err("reading from", socket))?;
    if answer.is_empty() {
        return Err(IpcError::Protocol(
            "the server closed the connection (not root?)".into(),
        ));
    }
    serde_json::from_str(&answer).map_err(|e| IpcError::Protocol(format!("{e}: {answer}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_wire_form() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"detach"}"#).unwrap(),
            Request::Detach { exit: false }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"upgrade"}"#).unwrap(),
            Request::Upgrade { binary: None }
        );
        assert_eq!(
            serde_json::to_string(&Request::Upgrade {
                binary: Some("/usr/bin/usrbd".into())
            })
            .unwrap(),
            r#"{"cmd":"upgrade","binary":"/usr/bin/usrbd"}"#
        );
    }

    #[test]
    fn a_request_round_trips_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let l = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        spawn_server(
            l,
            Arc::new(|r| {
                Response {
                    ok: r == Request::Attach,
                    state: "serving".into(),
                    error: None,
                    status: None,
                }
                .into()
            }),
        )
        .unwrap();
        assert!(call(&path, &Request::Attach).unwrap().ok);
        // An endless line is answered with an error and the connection closed.
        let mut s = UnixStream::connect(&path).unwrap();
        let long = vec![b'x'; 2 * MAX_LINE as usize];
        let _ = s.write_all(&long);
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).unwrap();
        assert!(answer.contains("longer than"), "{answer}");
        assert!(!call(&path, &Request::Status).unwrap().ok);
        // A live server's socket is not taken over.
        assert!(bind(&path).is_err());
    }

    #[test]
    fn the_handler_hears_once_its_reply_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let (wtx, wrx) = std::sync::mpsc::channel();
        let wtx = std::sync::Mutex::new(Some(wtx));
        spawn_server(
            bind(&path).unwrap(),
            Arc::new(move |_| Reply {
                response: Response {
                    ok: true,
                    state: "upgrading".into(),
                    error: None,
                    status: None,
                },
                written: wtx.lock().unwrap().take(),
            }),
        )
        .unwrap();
        assert!(wrx.try_recv().is_err());
        assert_eq!(
            call(&path, &Request::Upgrade { binary: None })
                .unwrap()
                .state,
            "upgrading"
        );
        wrx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}
