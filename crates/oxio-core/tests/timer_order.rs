//! Timers come out in deadline order, FIFO among equal deadlines, never before they are due.

use oxio_core::{monotonic, TimerHeap};

#[test]
fn earliest_deadline_first() {
    let mut heap = TimerHeap::new();
    for (when, name) in [(3.0, "c"), (1.0, "a"), (2.0, "b")] {
        heap.push(when, name);
    }
    let order: Vec<_> = std::iter::from_fn(|| heap.pop_due(10.0)).collect();
    assert_eq!(order, ["a", "b", "c"]);
}

#[test]
fn equal_deadlines_fire_in_push_order() {
    let mut heap = TimerHeap::new();
    for i in 0..1000 {
        heap.push(5.0, i);
    }
    let order: Vec<_> = std::iter::from_fn(|| heap.pop_due(5.0)).collect();
    assert_eq!(order, (0..1000).collect::<Vec<_>>());
}

#[test]
fn never_pops_early() {
    let mut heap = TimerHeap::new();
    heap.push(2.0, ());
    assert!(heap.pop_due(1.999_999_999).is_none());
    assert_eq!(heap.next_deadline(), Some(2.0));
    assert!(heap.pop_due(2.0).is_some());
    assert!(heap.is_empty());
}

#[test]
fn retain_hands_back_what_it_removes() {
    let mut heap = TimerHeap::new();
    for i in 0..10 {
        heap.push(i as f64, i);
    }
    let mut removed = heap.retain(|i| i % 2 == 0);
    removed.sort();
    assert_eq!(removed, [1, 3, 5, 7, 9]);
    let order: Vec<_> = std::iter::from_fn(|| heap.pop_due(100.0)).collect();
    assert_eq!(order, [0, 2, 4, 6, 8]);
}

#[test]
fn clock_has_sub_millisecond_resolution() {
    let start = monotonic();
    let mut distinct = 0;
    let mut last = start;
    while monotonic() - start < 0.002 {
        let now = monotonic();
        if now != last {
            distinct += 1;
            last = now;
        }
    }
    assert!(
        distinct > 10,
        "only {distinct} distinct clock readings in 2 ms"
    );
}
