//! JunoDB's operation codes and status codes, with their numeric values on the wire.

use std::fmt;

/// Operation codes a client may send to a proxy (JunoDB `OpCode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    Nop,
    Create,
    Get,
    Update,
    Set,
    Destroy,
    UdfGet,
    UdfSet,
    /// Any other byte: storage-internal JunoDB opcodes and garbage alike.
    Other(u8),
}

impl OpCode {
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => OpCode::Nop,
            1 => OpCode::Create,
            2 => OpCode::Get,
            3 => OpCode::Update,
            4 => OpCode::Set,
            5 => OpCode::Destroy,
            6 => OpCode::UdfGet,
            7 => OpCode::UdfSet,
            other => OpCode::Other(other),
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            OpCode::Nop => 0,
            OpCode::Create => 1,
            OpCode::Get => 2,
            OpCode::Update => 3,
            OpCode::Set => 4,
            OpCode::Destroy => 5,
            OpCode::UdfGet => 6,
            OpCode::UdfSet => 7,
            OpCode::Other(b) => b,
        }
    }
}

macro_rules! statuses {
    ($($name:ident = $code:expr),* $(,)?) => {
        /// Operation status returned in a response (JunoDB `OpStatus`). The names are
        /// JunoDB's, so a client that prints them prints what JunoDB users know.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum Status { $($name),*, Unknown(u8) }

        impl Status {
            pub fn from_byte(b: u8) -> Self {
                match b { $($code => Status::$name,)* other => Status::Unknown(other) }
            }
            pub fn to_byte(self) -> u8 {
                match self { $(Status::$name => $code,)* Status::Unknown(b) => b }
            }
            /// The status name, as printed by the CLI and written in histories.
            pub fn name(self) -> &'static str {
                match self { $(Status::$name => stringify!($name),)* Status::Unknown(_) => "Unknown" }
            }
            /// Parses a name produced by [`Status::name`].
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $(stringify!($name) => Some(Status::$name),)* _ => None }
            }
        }
    };
}

statuses! {
    Ok = 0,
    BadMsg = 1,
    ServiceDenied = 2,
    NoKey = 3,
    DupKey = 4,
    BadParam = 7,
    RecordLocked = 8,
    NoUncommitted = 10,
    NoStorageServer = 12,
    Busy = 14,
    Inserting = 15,
    AlreadyFulfilled = 17,
    VersionConflict = 19,
    StorageServerErr = 21,
    SSOutofResource = 22,
    TTLExtendErr = 23,
    Timeout = 24,
    CommitFailure = 25,
    InconsistentState = 26,
    MarkedDelete = 27,
    NotSupported = 28,
    Internal = 255,
}

impl Status {
    /// Whether a request that got this status may have taken effect anyway: the client
    /// must treat its outcome as unknown. (NoStorageServer: the proxy could not reach
    /// a quorum and sent nothing that could take effect. Busy: the proxy was at its
    /// cap on requests in flight and did not start the request.)
    pub fn is_indeterminate(self) -> bool {
        !matches!(
            self,
            Status::Ok
                | Status::NoKey
                | Status::DupKey
                | Status::VersionConflict
                | Status::BadParam
                | Status::BadMsg
                | Status::NotSupported
                | Status::NoStorageServer
                | Status::Busy
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Unknown(b) => write!(f, "Unknown({b})"),
            s => f.write_str(s.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bytes_round_trip() {
        for b in 0..=255u8 {
            let s = Status::from_byte(b);
            assert_eq!(s.to_byte(), b);
            if !matches!(s, Status::Unknown(_)) {
                assert_eq!(Status::from_name(s.name()), Some(s));
            }
        }
        assert_eq!(Status::VersionConflict.to_byte(), 19);
        assert_eq!(Status::NotSupported.to_byte(), 28);
    }

    #[test]
    fn opcode_bytes_round_trip() {
        for b in 0..=255u8 {
            assert_eq!(OpCode::from_byte(b).to_byte(), b);
        }
    }
}
