//! Compute-device selection: the CPU by default, an NVIDIA GPU with the `cuda` cargo feature.

use candle_core::Device;

/// Which device to run on, as users spell it on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// CUDA device by ordinal (requires the `cuda` feature).
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    /// Accepts `cpu`, `cuda` and `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?} (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl DeviceChoice {
    /// Opens the device; a CUDA choice in a build without the `cuda` feature is an error.
    pub fn open(self) -> candle_core::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => Device::new_cuda(ordinal),
        }
    }
}
