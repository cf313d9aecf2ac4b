//! How busy the machine is: load average and I/O pressure, recorded at the
//! start and end of a run so noisy numbers can be recognised as such.

use serde_json::{json, Value};

/// Load and pressure at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Busy {
    /// 1-minute load average.
    pub load_1m: f64,
    /// `some avg10` of `/proc/pressure/io` (percent of time some task
    /// waited on I/O over the last 10 s), if available.
    pub io_pressure_avg10: Option<f64>,
    /// `some avg10` of `/proc/pressure/cpu`, if available.
    pub cpu_pressure_avg10: Option<f64>,
}

impl Busy {
    /// Reads the counters now (missing files give defaults).
    pub fn now() -> Busy {
        let load_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(f64::NAN);
        Busy {
            load_1m,
            io_pressure_avg10: pressure("/proc/pressure/io"),
            cpu_pressure_avg10: pressure("/proc/pressure/cpu"),
        }
    }

    /// As JSON.
    pub fn to_json(self) -> Value {
        json!({
            "load_1m": self.load_1m,
            "io_pressure_some_avg10": self.io_pressure_avg10,
            "cpu_pressure_some_avg10": self.cpu_pressure_avg10,
        })
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        let pct = |v: Option<f64>| v.map(|v| format!("{v:.1}%")).unwrap_or_else(|| "n/a".into());
        format!(
            "load {:.2}, io pressure {}, cpu pressure {}",
            self.load_1m,
            pct(self.io_pressure_avg10),
            pct(self.cpu_pressure_avg10)
        )
    }
}

/// `avg10` of the `some` line of a PSI file.
fn pressure(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("some"))?;
    line.split_whitespace().find_map(|kv| kv.strip_prefix("avg10=")?.parse().ok())
}
