//! `nixcast serve` holds against slow clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

/// A client that sends the start of a request and then one byte every
/// 100 ms, until the server closes the connection or `stop` is set.
fn trickle(addr: &str, stop: &AtomicBool) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    if s.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .is_err()
    {
        return;
    }
    let mut byte = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        if s.write_all(b"a").is_err() {
            return;
        }
        match s.read(&mut byte) {
            Ok(0) => return,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return,
            _ => {}
        }
    }
}

#[test]
fn slow_clients_do_not_keep_others_from_being_served() {
    let (_work, cache, keys) = scene();
    let top = Fixture {
        version: "serve",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &top, &keys, &[]);
    // With few file descriptors, as a busy server has few left: the slow
    // clients below are more than it can hold at once.
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg(nixcast().get_program())
        .args(["serve", "--cache"])
        .arg(&cache)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    std::thread::spawn(move || lines.for_each(drop));

    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..60)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || trickle(&addr, &stop))
        })
        .collect();
    // Give every slow client time to connect first (not an assertion).
    std::thread::sleep(Duration::from_secs(1));

    let mut s = TcpStream::connect(&addr).unwrap();
    // Only turns a hang into a failure.
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let read = s.read_to_string(&mut answer);
    stop.store(true, Ordering::Relaxed);
    for t in slow {
        t.join().unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    read.unwrap_or_else(|e| panic!("not served while slow clients trickle: {e}"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("StoreDir: /nix/store"), "{answer}");
}
