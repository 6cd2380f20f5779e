//! How long each step of a CRI call took (runc through the shim, mounts,
//! fsynced record commits, CNI, shim teardown), logged as `steps_ms` on the
//! line that says the call is done: where a call's time goes, read from
//! berthd's log.
use std::fmt;
use std::time::{Duration, Instant};

/// The steps of one call so far.
pub struct StepTimes {
    last: Instant,
    start: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl StepTimes {
    /// Starts timing a call.
    pub fn start() -> Self {
        let now = Instant::now();
        StepTimes { last: now, start: now, steps: Vec::new() }
    }

    /// Ends the step `name`: the time since the previous one.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }
}

impl fmt::Display for StepTimes {
    /// `step=ms ... total=ms`, in the order the steps ran.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, d) in &self.steps {
            write!(f, "{name}={:.1} ", d.as_secs_f64() * 1000.0)?;
        }
        write!(f, "total={:.1}", (self.last - self.start).as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_in_order_and_add_up() {
        let mut t = StepTimes::start();
        t.mark("recorded");
        std::thread::sleep(Duration::from_millis(2));
        t.mark("runtime");
        let text = t.to_string();
        let parts: Vec<&str> = text.split(' ').collect();
        assert_eq!(parts.len(), 3, "{text}");
        assert!(
            parts[0].starts_with("recorded=") && parts[1].starts_with("runtime=") && parts[2].starts_with("total=")
        );
        let ms = |p: &str| p.split_once('=').and_then(|(_, v)| v.parse::<f64>().ok()).unwrap_or(-1.0);
        assert!(ms(parts[1]) >= 2.0, "{text}");
        assert!(ms(parts[2]) >= ms(parts[0]) + ms(parts[1]) - 0.2, "{text}");
    }
}
