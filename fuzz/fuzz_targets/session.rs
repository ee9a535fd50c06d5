//! A whole client session against the null backend (dispatch logic only): the
//! input is everything the client sends, then it shuts down its write side.
//!
//! `Session::run` serves the other end of a socketpair in this thread and
//! must return (`Ok` on EOF, `Err` on a bad request) without panicking; a
//! thread drains the replies meanwhile so the session never blocks on a full
//! socket. After every run the process must hold exactly the fds it held
//! before (no memfd, eventfd or socket leaked by the session).
#![no_main]

use std::io::Read;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::thread;

use libfuzzer_sys::fuzz_target;
use vtest_protocol::Limits;
use vtest_session::{NullBackend, Session, SessionLimits};

/// Small limits, so that inputs reach them; large enough that the first
/// 64 KiB of real Mesa traffic in the corpus passes.
fn limits() -> SessionLimits {
    SessionLimits {
        protocol: Limits {
            max_command_bytes: 64 << 10,
            max_transfer_bytes: 16 << 10,
            max_name_bytes: 256,
        },
        max_resources: 64,
        max_resource_bytes: 4 << 20,
        max_shm_bytes: 16 << 20,
        max_syncs: 64,
        max_waits: 16,
        max_pending_fences: 256,
        ..SessionLimits::default()
    }
}

/// `VTESTD_FUZZ_VERBOSE=1`: print how each session ended (to check seeds).
fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("VTESTD_FUZZ_VERBOSE").is_some())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Writes `data` until done or the session has closed its end. `MSG_NOSIGNAL`:
/// libFuzzer's `main` is not Rust's, so SIGPIPE is not ignored here.
fn send_all(client: &UnixStream, mut data: &[u8]) {
    while !data.is_empty() {
        match rustix::net::send(client, data, rustix::net::SendFlags::NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let before = open_fds();
    {
        let (client, server) = UnixStream::pair().expect("socketpair");
        let mut drain = client.try_clone().expect("clone client");
        // Replies (and the fds they carry: a plain read discards them) are
        // read until the session closes its end.
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 16 << 10];
            while let Ok(n) = drain.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        });
        // The socket buffer may be smaller than the input: write it from a
        // thread too, so that neither side waits for the other.
        let input = data.to_vec();
        let writer = thread::spawn(move || {
            send_all(&client, &input);
            let _ = client.shutdown(Shutdown::Write);
            client
        });
        let mut session =
            Session::new(NullBackend::default(), server, limits()).expect("session set-up");
        // Ok on EOF, Err on a bad request: both are fine, a panic is not.
        let result = session.run();
        if verbose() {
            eprintln!(
                "{} bytes: {:?}, {} commands",
                data.len(),
                result,
                session.stats().commands
            );
        }
        drop(session);
        let client = writer.join().expect("writer thread");
        drop(client);
        reader.join().expect("reader thread");
    }
    let after = open_fds();
    assert_eq!(before, after, "fds before and after one session");
});
