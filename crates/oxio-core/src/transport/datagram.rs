//! The byte paths of a datagram socket: `recvfrom`/`sendto` over a raw fd, socket addresses
//! decoded into the parts Python's `socket` module reports, and the queue of datagrams that
//! wait for the socket to become writable.

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

/// `offsetof(struct sockaddr_un, sun_path)`: the family field comes first.
const SUN_PATH_OFFSET: usize = mem::size_of::<libc::sa_family_t>();

/// A socket address as the kernel reads and writes it (`sockaddr_storage` plus its length).
#[derive(Clone)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// A received sender address, in the parts Python's `socket.recvfrom()` reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Address {
    /// No address: an unbound Unix socket sent the datagram (Python reports `None`).
    Unnamed,
    /// `(host, port)`.
    Inet { host: String, port: u16 },
    /// `(host, port, flowinfo, scope_id)`.
    Inet6 {
        host: String,
        port: u16,
        flowinfo: u32,
        scope_id: u32,
    },
    /// A filesystem path (Python decodes it to `str`), without the terminating NUL.
    UnixPath(Vec<u8>),
    /// A Linux abstract-namespace name, leading NUL included (Python reports `bytes`).
    UnixAbstract(Vec<u8>),
    /// A family this module does not decode.
    Other(libc::sa_family_t),
}

impl SockAddr {
    fn zeroed() -> Self {
        Self {
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (AF_UNSPEC) value.
            storage: unsafe { mem::zeroed() },
            len: mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    pub fn inet(ip: Ipv4Addr, port: u16) -> Self {
        let mut addr = Self::zeroed();
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        addr.write(sin);
        addr
    }

    pub fn inet6(ip: Ipv6Addr, port: u16, flowinfo: u32, scope_id: u32) -> Self {
        let mut addr = Self::zeroed();
        let sin6 = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: port.to_be(),
            sin6_flowinfo: flowinfo.to_be(),
            sin6_addr: libc::in6_addr {
                s6_addr: ip.octets(),
            },
            sin6_scope_id: scope_id,
        };
        addr.write(sin6);
        addr
    }

    /// A Unix address: a path, or an abstract name if `path` starts with NUL. `None` if it
    /// does not fit in `sun_path`, or is empty (which CPython passes on as an unnamed address
    /// the kernel refuses, where a NUL-terminated empty path would name the abstract "\0").
    pub fn unix(path: &[u8]) -> Option<Self> {
        if path.is_empty() {
            return None;
        }
        let mut addr = Self::zeroed();
        let mut sun = libc::sockaddr_un {
            sun_family: libc::AF_UNIX as libc::sa_family_t,
            sun_path: [0; 108],
        };
        let abstract_name = path.first() == Some(&0);
        // A path needs room for its terminating NUL; an abstract name is counted exactly.
        let room = sun.sun_path.len() - usize::from(!abstract_name);
        if path.len() > room {
            return None;
        }
        for (dst, &src) in sun.sun_path.iter_mut().zip(path) {
            *dst = src as libc::c_char;
        }
        addr.write(sun);
        addr.len = (SUN_PATH_OFFSET + path.len() + usize::from(!abstract_name)) as libc::socklen_t;
        Some(addr)
    }

    /// Copies a concrete `sockaddr_*` into the storage and sets the length to its size.
    fn write<T: Copy>(&mut self, sockaddr: T) {
        const { assert!(mem::size_of::<T>() <= mem::size_of::<libc::sockaddr_storage>()) };
        // SAFETY: T is one of the libc sockaddr structs, no larger than sockaddr_storage (checked
        // above), whose alignment is the strictest of them all; write_unaligned needs none.
        unsafe { std::ptr::write_unaligned((&raw mut self.storage).cast::<T>(), sockaddr) };
        self.len = mem::size_of::<T>() as libc::socklen_t;
    }

    /// Reads the storage as a concrete `sockaddr_*` (the caller checked the family).
    fn read<T: Copy>(&self) -> T {
        const { assert!(mem::size_of::<T>() <= mem::size_of::<libc::sockaddr_storage>()) };
        // SAFETY: as in `write`; every bit pattern is a valid value of these C structs.
        unsafe { std::ptr::read_unaligned((&raw const self.storage).cast::<T>()) }
    }

    /// The pointer and length to hand to `bind(2)`, `connect(2)` or `sendto(2)`.
    pub fn as_raw(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        ((&raw const self.storage).cast(), self.len)
    }

    pub fn family(&self) -> libc::sa_family_t {
        self.storage.ss_family
    }

    /// Decodes the address the way CPython's `makesockaddr` does, so the protocol sees the
    /// same tuple or path as with `socket.recvfrom()`.
    pub fn decode(&self) -> io::Result<Address> {
        if self.len == 0 {
            // Linux reports a zero length for datagrams from unbound Unix sockets.
            return Ok(Address::Unnamed);
        }
        match i32::from(self.family()) {
            libc::AF_INET => {
                let sin: libc::sockaddr_in = self.read();
                Ok(Address::Inet {
                    host: self.numeric_host()?,
                    port: u16::from_be(sin.sin_port),
                })
            }
            libc::AF_INET6 => {
                let sin6: libc::sockaddr_in6 = self.read();
                Ok(Address::Inet6 {
                    host: self.numeric_host()?,
                    port: u16::from_be(sin6.sin6_port),
                    flowinfo: u32::from_be(sin6.sin6_flowinfo),
                    scope_id: sin6.sin6_scope_id,
                })
            }
            libc::AF_UNIX => {
                let sun: libc::sockaddr_un = self.read();
                let path_len = (self.len as usize).saturating_sub(SUN_PATH_OFFSET);
                let path: Vec<u8> = sun.sun_path[..path_len.min(sun.sun_path.len())]
                    .iter()
                    .map(|&c| c as u8)
                    .collect();
                if path.first() == Some(&0) {
                    return Ok(Address::UnixAbstract(path));
                }
                let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                Ok(Address::UnixPath(path[..end].to_vec()))
            }
            _ => Ok(Address::Other(self.family())),
        }
    }

    /// The host part as text. CPython formats it with `getnameinfo(NI_NUMERICHOST)`, so we do
    /// too: the same libc call gives the same text, `%scope` suffix of link-local IPv6 included.
    fn numeric_host(&self) -> io::Result<String> {
        let mut host: [libc::c_char; libc::NI_MAXHOST as usize] = [0; libc::NI_MAXHOST as usize];
        // SAFETY: the storage holds `len` valid bytes of a sockaddr; `host` is writable for its
        // length, which is passed; no service buffer is requested. NI_NUMERICHOST never
        // touches the network.
        let rc = unsafe {
            libc::getnameinfo(
                (&raw const self.storage).cast::<libc::sockaddr>(),
                self.len,
                host.as_mut_ptr(),
                host.len() as libc::socklen_t,
                std::ptr::null_mut(),
                0,
                libc::NI_NUMERICHOST,
            )
        };
        if rc != 0 {
            return Err(io::Error::other(format!("getnameinfo failed ({rc})")));
        }
        // SAFETY: on success getnameinfo wrote a NUL-terminated string into `host`.
        let text = unsafe { CStr::from_ptr(host.as_ptr()) };
        Ok(text.to_string_lossy().into_owned())
    }
}

/// Parses a numeric IPv4 host with `inet_pton`, the check CPython makes before it falls back to
/// name resolution; `None` for anything else (a name, an empty string, an embedded NUL).
pub fn parse_ipv4(host: &str) -> Option<Ipv4Addr> {
    let mut out = [0u8; 4];
    inet_pton(libc::AF_INET, host, &mut out).then(|| Ipv4Addr::from(out))
}

/// As `parse_ipv4`, for IPv6. A `%scope` suffix is not numeric (CPython resolves it by name).
pub fn parse_ipv6(host: &str) -> Option<Ipv6Addr> {
    let mut out = [0u8; 16];
    inet_pton(libc::AF_INET6, host, &mut out).then(|| Ipv6Addr::from(out))
}

// The libc crate does not bind inet_pton(3); glibc and musl both export it.
extern "C" {
    #[link_name = "inet_pton"]
    fn c_inet_pton(
        family: libc::c_int,
        src: *const libc::c_char,
        dst: *mut libc::c_void,
    ) -> libc::c_int;
}

fn inet_pton(family: libc::c_int, host: &str, out: &mut [u8]) -> bool {
    let Ok(host) = CString::new(host) else {
        return false;
    };
    // SAFETY: `host` is NUL-terminated; `out` is 4 bytes for AF_INET and 16 for AF_INET6, the
    // sizes inet_pton writes for those families.
    unsafe { c_inet_pton(family, host.as_ptr(), out.as_mut_ptr().cast()) == 1 }
}

/// `recvfrom(2)` into `buf`: the datagram's length (truncated to `buf`) and its sender.
pub fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    let mut addr = SockAddr::zeroed();
    loop {
        // SAFETY: `buf` is writable for `buf.len()` bytes; `addr.storage` is writable for
        // `addr.len` bytes, and the kernel stores the real length back into `addr.len`.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut addr.storage).cast::<libc::sockaddr>(),
                &mut addr.len,
            )
        };
        if n >= 0 {
            return Ok((n as usize, addr));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `sendto(2)` of one datagram; `None` sends to the connected peer. `MSG_NOSIGNAL` turns a
/// vanished Unix peer into `EPIPE`, not a signal.
pub fn send_to(fd: RawFd, data: &[u8], to: Option<&SockAddr>) -> io::Result<usize> {
    let (name, name_len) = to.map_or((std::ptr::null(), 0), SockAddr::as_raw);
    loop {
        // SAFETY: `data` is readable for its length; `name` is null with length 0, or points
        // to `name_len` valid bytes of a sockaddr that outlives the call.
        let n = unsafe {
            libc::sendto(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
                name,
                name_len,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Datagrams accepted by `sendto()` that the socket has not taken yet, oldest first, each with
/// its destination `D` (whatever the caller needs to send it).
pub struct DatagramQueue<D> {
    datagrams: VecDeque<(Vec<u8>, D)>,
    /// What each queued datagram counts beyond its payload (asyncio counts a UDP header from
    /// 3.13 on, so that a flood of empty datagrams still reaches the high-water mark).
    header_size: usize,
    size: usize,
}

impl<D> DatagramQueue<D> {
    pub fn new(header_size: usize) -> Self {
        Self {
            datagrams: VecDeque::new(),
            header_size,
            size: 0,
        }
    }

    /// The buffered size that `get_write_buffer_size()` reports.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    pub fn push(&mut self, data: Vec<u8>, destination: D) {
        self.size += data.len() + self.header_size;
        self.datagrams.push_back((data, destination));
    }

    /// Puts back a datagram taken with `pop_front` that the socket did not accept.
    pub fn push_front(&mut self, data: Vec<u8>, destination: D) {
        self.size += data.len() + self.header_size;
        self.datagrams.push_front((data, destination));
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Vec<u8>, D)> {
        self.datagrams.iter()
    }

    pub fn pop_front(&mut self) -> Option<(Vec<u8>, D)> {
        let datagram = self.datagrams.pop_front()?;
        self.size -= datagram.0.len() + self.header_size;
        Some(datagram)
    }

    pub fn clear(&mut self) {
        self.datagrams.clear();
        self.size = 0;
    }
}
