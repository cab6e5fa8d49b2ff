//! A TCP proxy for partition tests: a server advertises the proxy's address, so the others
//! reach it only through the proxy, which can cut every connection and refuse new ones until
//! healed. Threads only; each copy ends when either side closes.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// See the module docs.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to whatever `target` holds once set.
    pub fn start(target: Arc<Mutex<Option<SocketAddr>>>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, open) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let closed = Arc::new(AtomicBool::new(false));
        let (cut_, closed_, open_) = (cut.clone(), closed.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if closed_.load(Ordering::SeqCst) {
                    return;
                }
                let to = *target.lock().unwrap();
                let (false, Some(to)) = (cut_.load(Ordering::SeqCst), to) else { continue };
                let Ok(server) = TcpStream::connect(to) else { continue };
                let mut kept = open_.lock().unwrap();
                kept.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut into) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, cut, closed, open }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    /// Cuts everything and ends the accepting thread (woken by one last connection).
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(self.addr);
    }
}
