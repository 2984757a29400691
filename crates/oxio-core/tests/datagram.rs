//! Datagram sockets: recvfrom/sendto over raw fds, sender addresses decoded as Python's
//! `socket` module reports them, and the queue's size accounting.

use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

use oxio_core::transport::datagram::{parse_ipv4, parse_ipv6, recv_from, send_to};
use oxio_core::{Address, DatagramQueue, SockAddr};

#[test]
fn udp_v4_round_trip_reports_the_sender() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = SockAddr::inet(Ipv4Addr::LOCALHOST, b.local_addr().unwrap().port());
    assert_eq!(send_to(a.as_raw_fd(), b"ping", Some(&to)).unwrap(), 4);
    let mut buf = [0u8; 64];
    let (n, from) = recv_from(b.as_raw_fd(), &mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    let expected = Address::Inet {
        host: "127.0.0.1".into(),
        port: a.local_addr().unwrap().port(),
    };
    assert_eq!(from.decode().unwrap(), expected);
}

#[test]
fn udp_v6_reports_flowinfo_and_scope() {
    let Ok(a) = UdpSocket::bind("[::1]:0") else {
        return; // no IPv6 loopback on this host
    };
    let b = UdpSocket::bind("[::1]:0").unwrap();
    let to = SockAddr::inet6(Ipv6Addr::LOCALHOST, b.local_addr().unwrap().port(), 0, 0);
    send_to(a.as_raw_fd(), b"", Some(&to)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = recv_from(b.as_raw_fd(), &mut buf).unwrap();
    assert_eq!(n, 0, "an empty datagram is a datagram");
    let expected = Address::Inet6 {
        host: "::1".into(),
        port: a.local_addr().unwrap().port(),
        flowinfo: 0,
        scope_id: 0,
    };
    assert_eq!(from.decode().unwrap(), expected);
}

#[test]
fn connected_send_needs_no_address() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    send_to(a.as_raw_fd(), b"x", None).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(recv_from(b.as_raw_fd(), &mut buf).unwrap().0, 1);
}

#[test]
fn unix_paths_abstract_names_and_unnamed_senders() {
    let dir = std::env::temp_dir().join(format!("oxio-dgram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.sock");
    let _ = std::fs::remove_file(&path);
    let server = UnixDatagram::bind(&path).unwrap();
    let mut buf = [0u8; 16];

    let unnamed = UnixDatagram::unbound().unwrap();
    let to = SockAddr::unix(path.as_os_str().as_encoded_bytes()).unwrap();
    send_to(unnamed.as_raw_fd(), b"a", Some(&to)).unwrap();
    let (_, from) = recv_from(server.as_raw_fd(), &mut buf).unwrap();
    assert_eq!(from.decode().unwrap(), Address::Unnamed);

    let client_path = dir.join("client.sock");
    let _ = std::fs::remove_file(&client_path);
    let named = UnixDatagram::bind(&client_path).unwrap();
    send_to(named.as_raw_fd(), b"b", Some(&to)).unwrap();
    let (_, from) = recv_from(server.as_raw_fd(), &mut buf).unwrap();
    let client_bytes = client_path.as_os_str().as_encoded_bytes().to_vec();
    assert_eq!(from.decode().unwrap(), Address::UnixPath(client_bytes));

    let name = format!("\0oxio-abstract-{}", std::process::id());
    let abstract_server = UnixDatagram::unbound().unwrap();
    let sender = UnixDatagram::unbound().unwrap();
    assert_eq!(bind(&sender, &SockAddr::unix(name.as_bytes()).unwrap()), 0);
    let to_abstract = SockAddr::unix(format!("{name}-srv").as_bytes()).unwrap();
    assert_eq!(bind(&abstract_server, &to_abstract), 0);
    send_to(sender.as_raw_fd(), b"c", Some(&to_abstract)).unwrap();
    let (_, from) = recv_from(abstract_server.as_raw_fd(), &mut buf).unwrap();
    assert_eq!(
        from.decode().unwrap(),
        Address::UnixAbstract(name.into_bytes())
    );

    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bind(2)` to an abstract name, which std's `UnixDatagram::bind` cannot express portably.
fn bind(sock: &UnixDatagram, addr: &SockAddr) -> i32 {
    let (ptr, len) = addr.as_raw();
    // SAFETY: `ptr` points to `len` valid bytes of a sockaddr owned by `addr`.
    unsafe { libc::bind(sock.as_raw_fd(), ptr, len) }
}

#[test]
fn a_path_must_fit_in_sun_path() {
    assert!(SockAddr::unix(&[b'a'; 107]).is_some());
    assert!(SockAddr::unix(&[b'a'; 108]).is_none());
    let mut abstract_name = vec![0u8];
    abstract_name.extend_from_slice(&[b'a'; 107]);
    assert!(SockAddr::unix(&abstract_name).is_some());
}

#[test]
fn numeric_hosts_parse_as_inet_pton_does() {
    assert_eq!(parse_ipv4("127.0.0.1"), Some(Ipv4Addr::LOCALHOST));
    assert_eq!(parse_ipv4("localhost"), None);
    assert_eq!(parse_ipv4(""), None);
    assert_eq!(parse_ipv4("1.2.3.4\0"), None);
    assert_eq!(parse_ipv6("::1"), Some(Ipv6Addr::LOCALHOST));
    assert_eq!(parse_ipv6("fe80::1%lo"), None);
    assert_eq!(parse_ipv6("127.0.0.1"), None);
}

#[test]
fn queue_counts_payload_and_header_until_sent() {
    let mut queue = DatagramQueue::new(8);
    queue.push(b"hello".to_vec(), 1);
    queue.push(Vec::new(), 2);
    assert_eq!(queue.size(), 5 + 8 + 8);
    let (data, destination) = queue.pop_front().unwrap();
    assert_eq!((data.as_slice(), destination), (&b"hello"[..], 1));
    assert_eq!(queue.size(), 8);
    queue.push_front(data, destination);
    assert_eq!(queue.size(), 5 + 8 + 8);
    assert_eq!(queue.iter().map(|d| d.1).collect::<Vec<_>>(), [1, 2]);
    queue.clear();
    assert!(queue.is_empty());
    assert_eq!(queue.size(), 0);
}
