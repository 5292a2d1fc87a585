//! A `log` backend that keeps every record, so tests can prove that a
//! fallback was reported (and that no password was ever logged).

use std::sync::{Mutex, OnceLock};

pub struct Capture {
    lines: Mutex<Vec<String>>,
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    fn flush(&self) {}
}

impl Capture {
    /// Every captured line that contains `needle`.
    pub fn lines_containing(&self, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Every captured line.
    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Installs the capture as the global logger (once per test binary).
pub fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::new(Capture {
            lines: Mutex::new(Vec::new()),
        }));
        log::set_logger(capture).expect("no other logger in the test binary");
        log::set_max_level(log::LevelFilter::Trace);
        capture
    })
}
