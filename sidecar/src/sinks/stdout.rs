//! The sidecar's standard output: what `kubectl logs -c servicelog-sidecar` shows.

use std::io::{self, Write};

pub struct StdoutWriter {
    out: io::Stdout,
}

impl StdoutWriter {
    pub fn new() -> Self {
        Self { out: io::stdout() }
    }
}

impl Default for StdoutWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl super::Writer for StdoutWriter {
    fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        // One locked write per batch: batches of two stdout sinks never interleave lines.
        self.out.lock().write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.lock().flush()
    }
}
