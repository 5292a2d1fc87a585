//! A TCP proxy that adds a fixed delay each way (half the round trip it
//! adds), as a same-region network does: every chunk is forwarded `delay`
//! after it arrived, whatever else is in flight, so the delay is latency,
//! not a throughput limit. One proxy serves every client of a comparison.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::BoxError;

/// A running proxy; it lives (its threads with it) until the process ends.
pub struct LatencyProxy {
    addr: SocketAddr,
}

impl LatencyProxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `target`, each byte `one_way` late in each direction.
    pub fn start(target: SocketAddr, one_way: Duration) -> Result<LatencyProxy, BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        thread::Builder::new()
            .name("latency-proxy".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    if let Ok(server) = TcpStream::connect(target) {
                        pipe(&client, &server, one_way);
                        pipe(&server, &client, one_way);
                    }
                }
            })?;
        Ok(LatencyProxy { addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Forwards `from` to `to`, each chunk `delay` after it was read: one
/// thread reads and stamps, one waits and writes.
fn pipe(from: &TcpStream, to: &TcpStream, delay: Duration) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let _ = from.set_nodelay(true);
    let _ = to.set_nodelay(true);
    let (chunks, arrived) = mpsc::channel::<(Instant, Vec<u8>)>();
    let _ = thread::Builder::new()
        .name("latency-read".into())
        .spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || chunks.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        });
    let _ = thread::Builder::new()
        .name("latency-write".into())
        .spawn(move || {
            for (at, chunk) in arrived {
                let due = at + delay;
                // Sleep most of the way, then spin: thread sleeps overshoot by
                // tens of microseconds, a visible share of 500 µs.
                if let Some(wait) = due.checked_duration_since(Instant::now())
                    && wait > Duration::from_micros(100)
                {
                    thread::sleep(wait - Duration::from_micros(100));
                }
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                if to.write_all(&chunk).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
}
