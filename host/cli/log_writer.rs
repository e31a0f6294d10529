//! Where the log's lines go: a buffer that a thread of its own writes to stderr, so a request
//! that logs (every request logs its access line) formats its line but never waits on a write
//! to stderr (at most it wakes the writer: the first line into an empty buffer does).
//!
//! The writer thread sleeps while the buffer is empty; the first line into an empty buffer
//! wakes it, and it then waits [`GATHER`] for more before writing them all at once. A full
//! buffer ([`CAPACITY`]) makes whoever logs wait for the writer, as a blocking stderr would:
//! lines are never dropped. [`LogWriter::flush`] (on exit) and a panic write out what is
//! buffered, waiting at most [`FLUSH_PATIENCE`] for a stuck stderr. A crash (`kill -9`, an
//! abort) loses what is buffered: the last [`GATHER`] of lines, more if stderr is slow.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer gathers lines after the first one before writing them.
pub const GATHER: Duration = Duration::from_millis(5);
/// Bytes buffered at most; beyond it, logging waits for the writer.
const CAPACITY: usize = 4 << 20;
/// Bytes at which the writer stops gathering and writes at once.
const WRITE_NOW: usize = 256 << 10;

/// The longest a flush waits for the writer (stderr may be a pipe nobody reads).
const FLUSH_PATIENCE: Duration = Duration::from_secs(1);

/// A `MakeWriter` for `tracing_subscriber` whose lines a background thread writes.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Wakes the writer: the first line in an empty buffer, a buffer past `WRITE_NOW`, a flush.
    wake: Condvar,
    /// Wakes those waiting for room or for a flush: the writer took a buffer, or wrote one.
    progress: Condvar,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    /// A flush is waiting: write without gathering.
    urgent: bool,
    /// Buffers the writer has taken, and of those, how many it has written.
    taken: u64,
    written: u64,
}

impl LogWriter {
    /// Starts the writer thread, writing to `sink`.
    pub fn start(mut sink: impl Write + Send + 'static) -> io::Result<LogWriter> {
        let shared =
            Arc::new(Shared { buffer: Mutex::default(), wake: Condvar::new(), progress: Condvar::new() });
        let writer = shared.clone();
        thread::Builder::new().name("log-writer".into()).spawn(move || {
            let mut lines = Vec::new();
            loop {
                writer.take_into(&mut lines);
                // A log that cannot be written has nowhere to report it.
                let _ = sink.write_all(&lines).and_then(|()| sink.flush());
                lines.clear();
            }
        })?;
        Ok(LogWriter { shared })
    }

    /// Waits (up to [`FLUSH_PATIENCE`]) until every line logged so far is written.
    pub fn flush(&self) {
        let shared = &self.shared;
        let mut buffer = shared.lock();
        // Lines still in the buffer go out with the next take; lines taken, with the last.
        let target = buffer.taken + u64::from(!buffer.bytes.is_empty());
        let give_up = Instant::now() + FLUSH_PATIENCE;
        while buffer.written < target && Instant::now() < give_up {
            buffer.urgent = true;
            shared.wake.notify_all();
            buffer = shared.progress.wait_timeout(buffer, GATHER).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Makes a panic write out the lines logged before it, ahead of its own message.
    pub fn flush_on_panic(&self) {
        let writer = self.clone();
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |panic| {
            writer.flush();
            report(panic);
        }));
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `bytes`, waiting for room while the buffer is full.
    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.lock();
        while buffer.bytes.len() >= CAPACITY {
            buffer.urgent = true;
            self.wake.notify_all();
            buffer = self.progress.wait(buffer).unwrap_or_else(PoisonError::into_inner);
        }
        let was_empty = buffer.bytes.is_empty();
        buffer.bytes.extend_from_slice(bytes);
        if was_empty || buffer.bytes.len() >= WRITE_NOW {
            self.wake.notify_all();
        }
    }

    /// The writer's side: notes the last buffer as written, waits for lines, gathers more
    /// for a moment, and swaps them into `lines` (empty, keeping its allocation).
    fn take_into(&self, lines: &mut Vec<u8>) {
        let mut buffer = self.lock();
        buffer.written = buffer.taken;
        self.progress.notify_all();
        while buffer.bytes.is_empty() {
            buffer = self.wake.wait(buffer).unwrap_or_else(PoisonError::into_inner);
        }
        if !buffer.urgent && buffer.bytes.len() < WRITE_NOW {
            buffer = self.wake.wait_timeout(buffer, GATHER).unwrap_or_else(PoisonError::into_inner).0;
        }
        buffer.urgent = false;
        std::mem::swap(&mut buffer.bytes, lines);
        buffer.taken += 1;
        self.progress.notify_all();
    }
}

/// What one log event writes through; the formatter writes each event whole.
pub struct EventWriter<'a>(&'a Shared);

impl Write for EventWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, that writes slowly so lines pile up behind it.
    #[derive(Clone, Default)]
    struct SlowSink(Arc<Mutex<Vec<u8>>>);

    impl Write for SlowSink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            thread::sleep(Duration::from_micros(200));
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_whole_and_once_and_flush_waits_for_them() {
        let sink = SlowSink::default();
        let log = LogWriter::start(sink.clone()).unwrap();
        // Long lines, so the buffer fills past its capacity and loggers wait for room.
        let padding = "x".repeat(10_000);
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let log = log.clone();
                let padding = padding.clone();
                thread::spawn(move || {
                    for line in 0..200 {
                        // As the formatter does: each event whole, in one write.
                        let event = format!("{thread} {line} {padding}\n");
                        log.make_writer().write_all(event.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        log.flush();
        let written = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 800);
        for thread in 0..4 {
            let numbers: Vec<usize> = lines
                .iter()
                .filter_map(|line| {
                    let mut words = line.split(' ');
                    let from = words.next()?.parse::<usize>().ok()?;
                    let number = words.next()?.parse().ok()?;
                    assert_eq!(words.next(), Some(padding.as_str()), "a line was cut or mixed");
                    (from == thread).then_some(number)
                })
                .collect();
            assert_eq!(numbers, (0..200).collect::<Vec<_>>(), "thread {thread}'s lines, in order");
        }
    }

    #[test]
    fn a_flush_returns_once_its_lines_are_out_and_at_once_with_none() {
        let sink = SlowSink::default();
        let log = LogWriter::start(sink.clone()).unwrap();
        log.flush();
        log.make_writer().write_all(b"one\n").unwrap();
        log.flush();
        assert_eq!(&*sink.0.lock().unwrap(), b"one\n");
        log.flush();
    }
}
