//! Registration, level-triggered readiness, and cross-thread wake-ups of the poller.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxio_core::{Events, Interest, Poller, Waker};

const READ: Interest = Interest {
    readable: true,
    writable: false,
};

#[test]
fn reports_readable_until_drained() {
    let poller = Poller::new().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    poller.add(b.as_raw_fd(), 7, READ).unwrap();
    let mut events = Events::with_capacity(8);

    poller
        .wait(&mut events, Some(Duration::from_millis(0)))
        .unwrap();
    assert!(events.is_empty());

    a.write_all(b"x").unwrap();
    // Level-triggered: the event repeats while the byte is unread.
    for _ in 0..2 {
        poller
            .wait(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        let got: Vec<_> = events.iter().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].token, 7);
        assert!(got[0].readable);
    }
}

#[test]
fn edge_triggered_reports_changes_not_states() {
    let poller = Poller::new().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    poller.add_edge(b.as_raw_fd(), 3, READ).unwrap();
    let mut events = Events::with_capacity(8);
    a.write_all(b"x").unwrap();
    poller
        .wait(&mut events, Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(events.iter().map(|e| e.token).collect::<Vec<_>>(), [3]);
    // The byte is still unread, but nothing changed: nothing more, no busy loop.
    poller
        .wait(&mut events, Some(Duration::from_millis(0)))
        .unwrap();
    assert!(events.is_empty());
    // New data is a new edge, reported under the token of the latest change.
    assert!(poller.add_edge(b.as_raw_fd(), 3, READ).is_err());
    poller.modify_edge(b.as_raw_fd(), 4, READ).unwrap();
    poller
        .wait(&mut events, Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(events.iter().map(|e| e.token).collect::<Vec<_>>(), [4]);
    a.write_all(b"y").unwrap();
    poller
        .wait(&mut events, Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(events.iter().map(|e| e.token).collect::<Vec<_>>(), [4]);
    // A plain modify turns it back into a level-triggered registration.
    poller.modify(b.as_raw_fd(), 3, READ).unwrap();
    for _ in 0..2 {
        poller
            .wait(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(events.len(), 1);
    }
}

#[test]
fn modify_and_delete() {
    let poller = Poller::new().unwrap();
    let (_a, b) = UnixStream::pair().unwrap();
    poller.add(b.as_raw_fd(), 1, READ).unwrap();
    let both = Interest {
        readable: true,
        writable: true,
    };
    poller.modify(b.as_raw_fd(), 1, both).unwrap();
    let mut events = Events::with_capacity(8);
    poller
        .wait(&mut events, Some(Duration::from_secs(1)))
        .unwrap();
    assert!(events.iter().any(|e| e.token == 1 && e.writable));

    poller.delete(b.as_raw_fd()).unwrap();
    poller
        .wait(&mut events, Some(Duration::from_millis(0)))
        .unwrap();
    assert!(events.is_empty());
    // Deleting twice is harmless.
    poller.delete(b.as_raw_fd()).unwrap();
}

#[test]
fn timeout_is_not_shortened() {
    let poller = Poller::new().unwrap();
    let mut events = Events::with_capacity(1);
    let start = Instant::now();
    poller
        .wait(&mut events, Some(Duration::from_micros(1500)))
        .unwrap();
    assert!(start.elapsed() >= Duration::from_micros(1500));
}

#[test]
fn waker_interrupts_a_blocked_wait_from_another_thread() {
    let poller = Arc::new(Poller::new().unwrap());
    let waker = Arc::new(Waker::new().unwrap());
    poller.add(waker.as_raw_fd(), u64::MAX, READ).unwrap();

    let remote = Arc::clone(&waker);
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        remote.wake();
    });
    let mut events = Events::with_capacity(4);
    let start = Instant::now();
    poller.wait(&mut events, None).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(events.iter().next().unwrap().token, u64::MAX);
    thread.join().unwrap();

    waker.drain();
    poller
        .wait(&mut events, Some(Duration::from_millis(0)))
        .unwrap();
    assert!(events.is_empty(), "drain must reset the waker");
}

#[test]
fn a_burst_of_wake_ups_is_one_readiness_and_a_drain_rearms_the_waker() {
    let poller = Poller::new().unwrap();
    let waker = Waker::new().unwrap();
    poller.add(waker.as_raw_fd(), u64::MAX, READ).unwrap();
    let mut events = Events::with_capacity(4);
    for _ in 0..3 {
        for _ in 0..100 {
            waker.wake();
        }
        poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert_eq!(events.len(), 1);
        waker.drain();
        poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty(), "drain must reset the waker");
    }
}
