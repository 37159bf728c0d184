//! The scenarios' stand-in for Redis: answers `GET key` lines with `+value`, and when told to,
//! behaves like an exhausted pool that resets every connection (SO_LINGER 0 close: an RST).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

pub struct Dependency {
    pub addr: SocketAddr,
    resetting: Arc<AtomicBool>,
    pub resets: Arc<AtomicU64>,
}

impl Dependency {
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let resetting = Arc::new(AtomicBool::new(false));
        let resets = Arc::new(AtomicU64::new(0));
        let (r, n) = (resetting.clone(), resets.clone());
        std::thread::Builder::new()
            .name("dependency".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let (r, n) = (r.clone(), n.clone());
                    std::thread::spawn(move || serve(conn, &r, &n));
                }
            })?;
        Ok(Self {
            addr,
            resetting,
            resets,
        })
    }

    pub fn set_resetting(&self, on: bool) {
        self.resetting.store(on, Ordering::SeqCst);
    }
}

fn reset(conn: TcpStream, resets: &AtomicU64) {
    let _ = socket_linger_zero(&conn);
    resets.fetch_add(1, Ordering::Relaxed);
    drop(conn);
}

fn socket_linger_zero(conn: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let linger = libc_linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd and a correctly sized option value.
    let rc = unsafe {
        setsockopt(
            conn.as_raw_fd(),
            1,  /* SOL_SOCKET */
            13, /* SO_LINGER */
            (&linger as *const libc_linger).cast(),
            size_of::<libc_linger>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[repr(C)]
struct libc_linger {
    l_onoff: i32,
    l_linger: i32,
}

unsafe extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const std::ffi::c_void, len: u32) -> i32;
}

fn serve(conn: TcpStream, resetting: &AtomicBool, resets: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if resetting.load(Ordering::SeqCst) {
            return reset(reader.into_inner(), resets);
        }
        let key = line.trim_end().strip_prefix("GET ").unwrap_or("?");
        if writeln!(writer, "+value-of-{key}").is_err() {
            return;
        }
    }
}
