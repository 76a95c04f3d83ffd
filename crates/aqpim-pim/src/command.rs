//! DRAM and PIM commands, their scopes, and the levels of the bank hierarchy.
//!
//! The command set is the ISA's (code); which commands constrain which, and by
//! how much, is the device's (data: the rule rows of a spec).

use serde::{Deserialize, Serialize};

/// A level of the HBM3 bank hierarchy, outermost first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// A channel: its own command bus and clock.
    Channel,
    /// A pseudo-channel: its own data bus.
    PseudoChannel,
    /// A stack ID (rank) within a pseudo-channel.
    Sid,
    /// A bank group within a SID.
    BankGroup,
    /// A bank.
    Bank,
}

impl Level {
    /// All levels, outermost first; `Level::ALL[i] as usize == i`.
    pub const ALL: [Level; 5] = [
        Level::Channel,
        Level::PseudoChannel,
        Level::Sid,
        Level::BankGroup,
        Level::Bank,
    ];

    /// The name used in spec files.
    pub fn name(self) -> &'static str {
        match self {
            Level::Channel => "channel",
            Level::PseudoChannel => "pseudo_channel",
            Level::Sid => "sid",
            Level::BankGroup => "bank_group",
            Level::Bank => "bank",
        }
    }
}

/// What a command addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One bank (ACT, PRE, RD, WR, STC).
    Bank,
    /// Every bank of a channel at once, or the channel's buffer die.
    Channel,
}

macro_rules! commands {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $scope:ident;)*) => {
        /// A command as the timing model sees it: what one instruction issues
        /// on one channel. Refresh (`REF`) is inserted by the simulator.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[repr(u8)]
        pub enum Command {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl Command {
            /// Every command, in id order: `Command::ALL[c.index()] == c`.
            pub const ALL: &'static [Command] = &[$(Command::$variant,)*];

            /// The mnemonic used in spec files, traces and errors.
            pub fn name(self) -> &'static str {
                match self { $(Command::$variant => $name,)* }
            }

            /// Whether the command addresses one bank or a whole channel.
            pub fn scope(self) -> Scope {
                match self { $(Command::$variant => Scope::$scope,)* }
            }
        }
    };
}

commands! {
    /// Activate (open) a row in one bank.
    Act = "ACT", Bank;
    /// Precharge (close) one bank.
    Pre = "PRE", Bank;
    /// Activate the same row in every bank of a channel.
    ActAb = "ACTAB", Channel;
    /// Precharge every bank of a channel.
    PreAb = "PREAB", Channel;
    /// Read one column to the host.
    Rd = "RD", Bank;
    /// Write one column from the host.
    Wr = "WR", Bank;
    /// Write one column of host data into every bank's buffer.
    Wrgb = "WRGB", Channel;
    /// All-bank FP16 multiply-accumulate of a column against the buffer.
    Mac = "MAC", Channel;
    /// All-bank lookup-table accumulation of a column of codes.
    LutAcc = "LUTACC", Channel;
    /// All-bank histogram accumulation of a column of codes.
    HistAcc = "HISTACC", Channel;
    /// All-bank nearest-centroid search of a sub-vector read from a column.
    ArgMin = "ARGMIN", Channel;
    /// Move bank registers to the buffer die.
    Mvd = "MVD", Channel;
    /// Move buffer-die data into the bank buffers.
    Mvb = "MVB", Channel;
    /// Softmax on the buffer die.
    Sfm = "SFM", Channel;
    /// All-bank refresh (inserted by the simulator every tREFI).
    Ref = "REF", Channel;
    /// Clear registers of every bank, or a range of the buffer die.
    Clr = "CLR", Channel;
    /// All-bank bins-times-codebook multiply-accumulate of a column.
    BinMac = "BINMAC", Channel;
    /// Buffer-die reduction across the channel's bank slices.
    Red = "RED", Channel;
    /// Read buffer-die elements out to the host.
    Rdd = "RDD", Channel;
    /// Store code registers into a column of one bank's open row.
    Stc = "STC", Bank;
    /// Load a column of the open row of every bank into its dequantizer's
    /// parameter latch.
    Ldp = "LDP", Channel;
    /// All-bank dequantize-and-multiply-accumulate of a column of scalar
    /// codes.
    QMac = "QMAC", Channel;
}

/// Number of commands.
pub(crate) const NUM_COMMANDS: usize = 22;

impl Command {
    /// Dense id, `0..NUM_COMMANDS`.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The command with this mnemonic (case-sensitive, as in spec files).
    pub fn from_name(name: &str) -> Option<Command> {
        Command::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Whether the command reads a column of the open row in every bank
    /// (the all-bank PIM column operations).
    pub fn is_pim_column(self) -> bool {
        matches!(
            self,
            Command::Mac
                | Command::LutAcc
                | Command::HistAcc
                | Command::ArgMin
                | Command::BinMac
                | Command::Ldp
                | Command::QMac
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_and_names_unique() {
        assert_eq!(Command::ALL.len(), NUM_COMMANDS);
        for (i, c) in Command::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(Command::from_name(c.name()), Some(*c));
        }
        for (i, l) in Level::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i);
        }
    }
}
