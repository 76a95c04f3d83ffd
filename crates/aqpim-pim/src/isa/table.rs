//! The instruction table: every instruction declared once, as its mnemonic,
//! opcode, the timing-model command it issues, and its fields (text key,
//! kind, bit range, allowed values, and the loop stride that moves it).
//! Encoding, decoding, assembly, formatting, field checks, loop offsets, an
//! instruction's target and the address iterator used by validation are all
//! derived from these rows;
//! adding an instruction is one row here, one variant of
//! [`Instr`](super::Instr), and its semantics in `sim/`.

use half::f16;

use super::{BankSel, CodeBits, Instr, Strides};
use crate::command::Command;

/// The address spaces a field can point into; also the loop stride class
/// that moves it, in [`Strides`] order (`row, col, buf, reg, data, die`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    /// Rows of a bank.
    Row = 0,
    /// Columns of a row.
    Col = 1,
    /// FP16 elements of a bank buffer.
    Buf = 2,
    /// FP32 registers of a bank.
    Reg = 3,
    /// Bytes of host data.
    Data = 4,
    /// FP32 elements of a channel's buffer die.
    Die = 5,
}

/// How a field is written in text and in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `key=value`, an unsigned integer stored as `value - bias`.
    Uint,
    /// The channel (`ch=`), checked against the organisation.
    Channel,
    /// `pc= sid= bg= bank=`: 12 bits, pc at the top (2, 2, 4, 4 bits).
    Bank,
    /// A bare word when set; one bit.
    Flag,
    /// A bare word when set, encoded as the alternative opcode given.
    AltOpcode(u8),
    /// `bits=4|8`; one bit, set for 4-bit codes.
    CodeBits,
    /// `key=value`, a power of two in `min..=max`, stored as
    /// `log2(value / min)` (QMAC's `bits=2|4|8` in two bits).
    Pow2,
    /// `scale=` a decimal float stored as FP16 bits; must be finite.
    Scale,
    /// The positional `LOOP` count.
    Count,
    /// The `LOOP` strides: optional `row= col= buf= reg= data= die=` keys,
    /// signed 10-bit values in a second word (bits 63..4, row first).
    Strides,
}

/// One field of an instruction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    /// The text key (or flag word).
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    /// Lowest bit in the instruction word.
    pub(crate) lo: u32,
    /// Bits in the instruction word.
    pub(crate) width: u32,
    /// Smallest allowed value.
    pub(crate) min: u64,
    /// Largest allowed value.
    pub(crate) max: u64,
    /// Subtracted before encoding (`dsub` is stored minus one).
    pub(crate) bias: u64,
    /// Value when the text omits the operand (`None`: required).
    pub(crate) default: Option<u64>,
    /// The space an address field points into (`None` for non-addresses).
    pub(crate) space: Option<Space>,
    /// Whether `LOOP` strides move it (by its space's stride).
    pub(crate) strided: bool,
    /// With this flag of the same instruction set, the address is in the
    /// given space instead (CLR `off` with `die`).
    pub(crate) space_if: Option<(&'static str, Space)>,
}

impl Field {
    const fn new(name: &'static str, kind: Kind, lo: u32, width: u32) -> Field {
        Field {
            name,
            kind,
            lo,
            width,
            min: 0,
            max: if width == 0 { 1 } else { (1u64 << width) - 1 },
            bias: 0,
            default: None,
            space: None,
            strided: false,
            space_if: None,
        }
    }

    /// Restricts the values to `min..=max`.
    const fn range(mut self, min: u64, max: u64) -> Field {
        self.min = min;
        self.max = max;
        self
    }

    /// Stored as `value - bias`.
    const fn bias(mut self, bias: u64) -> Field {
        self.bias = bias;
        self
    }

    /// An address in `space`, moved by that space's loop stride.
    const fn strided(mut self, space: Space) -> Field {
        self.space = Some(space);
        self.strided = true;
        self
    }

    /// An address in `space` that loops do not move.
    const fn fixed(mut self, space: Space) -> Field {
        self.space = Some(space);
        self
    }

    /// In `space` instead when flag `flag` is set.
    const fn space_if(mut self, flag: &'static str, space: Space) -> Field {
        self.space_if = Some((flag, space));
        self
    }

    /// Optional in text, with this value when omitted.
    const fn default(mut self, v: u64) -> Field {
        self.default = Some(v);
        self
    }
}

/// `key=value` at bits `lo..lo + width`.
const fn uint(name: &'static str, lo: u32, width: u32) -> Field {
    Field::new(name, Kind::Uint, lo, width)
}

/// A one-bit flag at bit `lo`.
const fn flag(name: &'static str, lo: u32) -> Field {
    Field::new(name, Kind::Flag, lo, 1)
}

/// The channel, bits 55..48.
const CH: Field = Field::new("ch", Kind::Channel, 48, 8);
/// The bank select, bits 47..36.
const BANK: Field = Field::new("bank", Kind::Bank, 36, 12);
/// 16-bit offsets and lengths.
const fn u16f(name: &'static str, lo: u32) -> Field {
    uint(name, lo, 16)
}
/// Lengths of one or more elements at bits 31..16.
const LEN: Field = uint("len", 16, 16).range(1, 65535);
/// Code width at bit `lo`.
const fn bits(lo: u32) -> Field {
    Field::new("bits", Kind::CodeBits, lo, 1).range(4, 8)
}
/// Column at bits 47..40 (all-bank commands).
const COL_HI: Field = uint("col", 40, 8).strided(Space::Col);
/// Column at bits 35..28 (single-bank commands, after the bank select).
const COL_LO: Field = uint("col", 28, 8).strided(Space::Col);
/// Register at bits 15..0 (LUTACC, HISTACC).
const REG_LO: Field = u16f("reg", 0).strided(Space::Reg);
/// Codes per group, 1..=64 in 7 bits.
const GROUP: Field = uint("group", 32, 7).range(1, 64);

/// Largest loop count (`LOOP` counts are `1..2^24`).
pub const MAX_LOOP_COUNT: u32 = (1 << 24) - 1;

/// One row of the table.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) mnemonic: &'static str,
    pub(crate) opcode: u8,
    /// The timing-model command it issues (`None` for BARRIER, LOOP, ENDLOOP).
    pub(crate) command: Option<Command>,
    pub(crate) fields: &'static [Field],
}

/// Most fields of any instruction.
pub(crate) const MAX_FIELDS: usize = 9;

/// An instruction's field values in table order (unused tail zero). Each
/// value is the field's own value (not its encoding): integers as they are,
/// flags 0 or 1, code widths 4 or 8, scales as FP16 bits, a bank select as
/// the bytes `pc, sid, bg, bank` (high to low), strides as six 16-bit two's
/// complement values (row highest).
pub(crate) type Values = [u128; MAX_FIELDS];

/// Conversion of one field type to and from its table value.
pub(crate) trait FieldValue: Sized + Copy {
    fn raw(self) -> u128;
    /// `None` when the value does not fit the field's Rust type.
    fn from_raw(v: u128) -> Option<Self>;
    /// The value moved by a loop offset `d`; `None` when the result is
    /// negative or does not fit. Only integers move; anything else only by 0.
    #[inline]
    fn shifted(self, d: i64) -> Option<Self> {
        (d == 0).then_some(self)
    }
    /// The value of an integer field (`None` for any other).
    #[inline]
    fn as_uint(self) -> Option<u64> {
        None
    }
    /// The value as a bank select, for the field of kind [`Kind::Bank`].
    #[inline]
    fn as_bank(self) -> Option<BankSel> {
        None
    }
}

macro_rules! int_field_value {
    ($($t:ty),*) => {$(
        impl FieldValue for $t {
            fn raw(self) -> u128 {
                self.into()
            }
            fn from_raw(v: u128) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            #[inline]
            fn shifted(self, d: i64) -> Option<Self> {
                <$t>::try_from(i64::from(self).checked_add(d)?).ok()
            }
            #[inline]
            fn as_uint(self) -> Option<u64> {
                Some(self.into())
            }
        }
    )*};
}
int_field_value!(u8, u16, u32);

impl FieldValue for bool {
    fn raw(self) -> u128 {
        self.into()
    }
    fn from_raw(v: u128) -> Option<Self> {
        Some(v != 0)
    }
}

impl FieldValue for CodeBits {
    fn raw(self) -> u128 {
        self.bits().into()
    }
    fn from_raw(v: u128) -> Option<Self> {
        match v {
            8 => Some(CodeBits::Eight),
            4 => Some(CodeBits::Four),
            _ => None,
        }
    }
}

impl FieldValue for f16 {
    fn raw(self) -> u128 {
        self.to_bits().into()
    }
    fn from_raw(v: u128) -> Option<Self> {
        u16::try_from(v).ok().map(f16::from_bits)
    }
}

impl FieldValue for BankSel {
    fn raw(self) -> u128 {
        u128::from(u32::from_be_bytes([self.pc, self.sid, self.bg, self.bank]))
    }
    fn from_raw(v: u128) -> Option<Self> {
        let [pc, sid, bg, bank] = u32::try_from(v).ok()?.to_be_bytes();
        Some(BankSel { pc, sid, bg, bank })
    }
    #[inline]
    fn as_bank(self) -> Option<BankSel> {
        Some(self)
    }
}

impl FieldValue for Strides {
    fn raw(self) -> u128 {
        self.to_array()
            .iter()
            .fold(0u128, |a, &s| (a << 16) | u128::from(s as u16))
    }
    fn from_raw(v: u128) -> Option<Self> {
        Some(Strides::from_array(std::array::from_fn(|i| {
            (v >> (16 * (5 - i))) as u16 as i16
        })))
    }
}

/// The four parts of a bank-select value, `(pc, sid, bg, bank)`.
pub(crate) fn bank_parts(v: u128) -> [u64; 4] {
    let b = (v as u32).to_be_bytes();
    b.map(u64::from)
}

/// Names, widths and largest values of the bank-select parts, pc first.
pub(crate) const BANK_PARTS: [(&str, u32, u64); 4] =
    [("pc", 2, 3), ("sid", 2, 3), ("bg", 4, 15), ("bank", 4, 15)];

/// Names of the strides, in [`Strides`] order.
pub(crate) const STRIDE_NAMES: [&str; 6] = ["row", "col", "buf", "reg", "data", "die"];

/// The strides of a strides value, in [`Strides`] order.
pub(crate) fn stride_parts(v: u128) -> [i16; 6] {
    Strides::from_raw(v).map_or([0; 6], Strides::to_array)
}

macro_rules! instruction_table {
    ($($Variant:ident = $op:literal $mnem:literal $cmd:expr ; { $($f:ident : $spec:expr),* $(,)? })*) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy)]
        enum Row { $($Variant),* }

        /// Every instruction, in opcode order.
        pub(crate) const TABLE: &[Spec] = &[$(Spec {
            mnemonic: $mnem,
            opcode: $op,
            command: $cmd,
            fields: &[$($spec),*],
        }),*];

        impl Instr {
            /// The index of the instruction's row of [`TABLE`].
            pub(crate) fn row(&self) -> usize {
                match self { $(Instr::$Variant { .. } => Row::$Variant as usize,)* }
            }

            /// The field values, in table order.
            #[inline]
            pub(crate) fn values(&self) -> Values {
                let mut v: Values = [0; MAX_FIELDS];
                let mut slots = v.iter_mut();
                match *self {
                    $(Instr::$Variant { $($f),* } => {
                        $(if let Some(s) = slots.next() { *s = FieldValue::raw($f); })*
                    })*
                }
                v
            }

            /// What the instruction addresses: its channel and bank select,
            /// where it has them (none for BARRIER, LOOP and ENDLOOP), and
            /// the row it opens or the column it reads or writes.
            #[inline]
            pub(crate) fn target(&self) -> Target {
                let mut t = Target::default();
                match *self {
                    $(Instr::$Variant { $($f),* } => {
                        #[allow(unused_mut, unused_variables)]
                        let mut fields = TABLE[Row::$Variant as usize].fields.iter();
                        $(match fields.next().map(|f| (f.kind, f.space)) {
                            Some((Kind::Channel, _)) => t.ch = $f.as_uint().map(|c| c as u8),
                            Some((Kind::Bank, _)) => t.bank = $f.as_bank(),
                            Some((_, Some(Space::Row))) => t.row = $f.as_uint().unwrap_or(0) as u32,
                            Some((_, Some(Space::Col))) => t.col = $f.as_uint().unwrap_or(0) as u16,
                            _ => {}
                        })*
                    })*
                }
                t
            }

            /// The concrete instruction that iteration offsets `offs` (per
            /// space, in [`Strides`] order) make of this one: each strided
            /// address gets its space's offset added. `None` when a result is
            /// negative or does not fit its field (validation rules both out
            /// before a run).
            #[inline]
            pub(crate) fn offset_by(&self, offs: &[i64; 6]) -> Option<Instr> {
                Some(match *self {
                    $(Instr::$Variant { $($f),* } => {
                        #[allow(unused_mut, unused_variables)]
                        let mut fields = TABLE[Row::$Variant as usize].fields.iter();
                        Instr::$Variant { $($f: $f.shifted(self.offset_of(fields.next()?, offs))?),* }
                    })*
                })
            }

            /// The instruction of table row `row` with field values `v`;
            /// `None` when a value does not fit its field's Rust type.
            #[inline]
            pub(crate) fn from_values(row: usize, v: &Values) -> Option<Instr> {
                #[allow(non_upper_case_globals)]
                mod rows { $(pub(super) const $Variant: usize = super::Row::$Variant as usize;)* }
                #[allow(unused_mut, unused_variables)]
                let mut it = v.iter().copied();
                Some(match row {
                    $(rows::$Variant => Instr::$Variant { $($f: FieldValue::from_raw(it.next()?)?),* },)*
                    _ => return None,
                })
            }
        }
    };
}

instruction_table! {
    // ACT: bank 47..36, row 35..12.
    Act = 0x01 "ACT" Some(Command::Act); {
        ch: CH, bank: BANK, row: uint("row", 12, 24).strided(Space::Row),
    }
    Pre = 0x02 "PRE" Some(Command::Pre); { ch: CH, bank: BANK }
    // ACTAB: row 47..24.
    ActAb = 0x03 "ACTAB" Some(Command::ActAb); { ch: CH, row: uint("row", 24, 24).strided(Space::Row) }
    PreAb = 0x04 "PREAB" Some(Command::PreAb); { ch: CH }
    // RD: col 35..28.
    Rd = 0x05 "RD" Some(Command::Rd); {
        ch: CH, bank: BANK, col: COL_LO,
    }
    // WR: col 35..28, data 27..0.
    Wr = 0x06 "WR" Some(Command::Wr); {
        ch: CH,
        bank: BANK,
        col: COL_LO,
        data: uint("data", 0, 28).strided(Space::Data),
    }
    // WRGB: buf 47..32, data 31..0.
    Wrgb = 0x07 "WRGB" Some(Command::Wrgb); {
        ch: CH,
        buf: u16f("buf", 32).strided(Space::Buf),
        data: uint("data", 0, 32).strided(Space::Data),
    }
    // MAC: col 47..40, buf 39..24, reg 23..8, reduce 7, bcast 6.
    Mac = 0x08 "MAC" Some(Command::Mac); {
        ch: CH,
        col: COL_HI,
        buf: u16f("buf", 24).strided(Space::Buf),
        reg: u16f("reg", 8).strided(Space::Reg),
        reduce: flag("reduce", 7),
        bcast: flag("bcast", 6),
    }
    // LUTACC: col 47..40, bits 39 (1 = 4-bit), group 38..32, table 31..16, reg 15..0.
    LutAcc = 0x09 "LUTACC" Some(Command::LutAcc); {
        ch: CH, col: COL_HI, bits: bits(39), group: GROUP,
        table: u16f("table", 16).strided(Space::Buf), reg: REG_LO,
    }
    // HISTACC: as LUTACC with weights in place of table.
    HistAcc = 0x0A "HISTACC" Some(Command::HistAcc); {
        ch: CH, col: COL_HI, bits: bits(39), group: GROUP,
        weights: u16f("weights", 16).strided(Space::Buf), reg: REG_LO,
    }
    // ARGMIN: col 47..40, start 39..36, dsub-1 35..32, nbits 31..28, cb 27..12, reg 11..0.
    ArgMin = 0x0B "ARGMIN" Some(Command::ArgMin); {
        ch: CH,
        col: COL_HI,
        start: uint("start", 36, 4),
        dsub: uint("dsub", 32, 4).range(1, 16).bias(1),
        nbits: uint("nbits", 28, 4).range(0, 8),
        cb: u16f("cb", 12).strided(Space::Buf),
        reg: uint("reg", 0, 12).strided(Space::Reg),
    }
    // MVD: reg 47..32, len 31..16, die 15..0.
    Mvd = 0x0C "MVD" Some(Command::Mvd); {
        ch: CH, reg: u16f("reg", 32).strided(Space::Reg), len: LEN, die: u16f("die", 0).strided(Space::Die),
    }
    // MVB: die 47..32, broadcast 31, len 30..16, buf 15..0.
    Mvb = 0x0D "MVB" Some(Command::Mvb); {
        ch: CH,
        die: u16f("die", 32).strided(Space::Die),
        len: uint("len", 16, 15).range(1, 32767),
        buf: u16f("buf", 0).strided(Space::Buf),
        broadcast: flag("bcast", 31),
    }
    // SFM (0x0E) and SFM stats (0x14): die 47..32, len 31..16, scale (FP16 bits) 15..0.
    Sfm = 0x0E "SFM" Some(Command::Sfm); {
        ch: CH,
        die: u16f("die", 32).strided(Space::Die),
        len: LEN,
        scale: Field::new("scale", Kind::Scale, 0, 16),
        stats: Field::new("stats", Kind::AltOpcode(0x14), 0, 0),
    }
    Barrier = 0x0F "BARRIER" None; {}
    // LOOP: count 55..32; a second word holds the strides.
    Loop = 0x10 "LOOP" None; {
        count: Field::new("count", Kind::Count, 32, 24).range(1, MAX_LOOP_COUNT as u64),
        strides: Field::new("strides", Kind::Strides, 0, 0),
    }
    EndLoop = 0x11 "ENDLOOP" None; {}
    // CLR: off 47..32, len 31..16, die 15.
    Clr = 0x12 "CLR" Some(Command::Clr); {
        ch: CH,
        off: u16f("off", 32).strided(Space::Reg).space_if("die", Space::Die),
        len: LEN,
        die: flag("die", 15),
    }
    // BINMAC: col 47..40, dsub-1 39..36, bins 35..20, out 19..4.
    BinMac = 0x13 "BINMAC" Some(Command::BinMac); {
        ch: CH,
        col: COL_HI,
        dsub: uint("dsub", 36, 4).range(1, 16).bias(1),
        bins: u16f("bins", 20).strided(Space::Reg),
        out: u16f("out", 4).fixed(Space::Reg),
    }
    // RED: src 47..32, len 31..16, dst 15..0.
    Red = 0x15 "RED" Some(Command::Red); {
        ch: CH, src: u16f("src", 32).strided(Space::Die), len: LEN, dst: u16f("dst", 0).strided(Space::Die),
    }
    // RDD: die 47..32, len 31..16.
    Rdd = 0x16 "RDD" Some(Command::Rdd); { ch: CH, die: u16f("die", 32).strided(Space::Die), len: LEN }
    // STC: bank 47..36, col 35..28, reg 27..12, bits 11 (1 = 4-bit; 8 when omitted in text).
    Stc = 0x17 "STC" Some(Command::Stc); {
        ch: CH,
        bank: BANK,
        col: COL_LO,
        reg: u16f("reg", 12).strided(Space::Reg),
        bits: bits(11).default(8),
    }
    // LDP: col 47..40, slot 39..32.
    Ldp = 0x18 "LDP" Some(Command::Ldp); {
        ch: CH, col: COL_HI, slot: uint("slot", 32, 8),
    }
    // QMAC: col 47..40, buf 39..29, reg 28..18, pslot 17..11, group-1 10..4,
    // bits 3..2 (log2(bits / 2)), reduce 1, mx 0.
    QMac = 0x19 "QMAC" Some(Command::QMac); {
        ch: CH,
        col: COL_HI,
        buf: uint("buf", 29, 11).strided(Space::Buf),
        reg: uint("reg", 18, 11).strided(Space::Reg),
        bits: Field::new("bits", Kind::Pow2, 2, 2).range(2, 8),
        group: uint("group", 4, 7).range(1, 128).bias(1),
        pslot: uint("pslot", 11, 7),
        reduce: flag("reduce", 1),
        mx: flag("mx", 0),
    }
}

/// The table row whose opcode (or alternative opcode) is `op`, and whether
/// it was the alternative.
pub(crate) fn by_opcode(op: u8) -> Option<(usize, &'static Spec, bool)> {
    TABLE.iter().enumerate().find_map(|(i, s)| {
        let alt = s.fields.iter().any(|f| f.kind == Kind::AltOpcode(op));
        (s.opcode == op || alt).then_some((i, s, s.opcode != op))
    })
}

/// The table row of a mnemonic (upper case).
pub(crate) fn by_mnemonic(m: &str) -> Option<(usize, &'static Spec)> {
    TABLE.iter().enumerate().find(|(_, s)| s.mnemonic == m)
}

/// Checks one field value against its allowed values.
pub(crate) fn check_value(f: &Field, v: u128) -> Result<(), String> {
    match f.kind {
        Kind::Bank => {
            for ((name, _, max), part) in BANK_PARTS.iter().zip(bank_parts(v)) {
                if part > *max {
                    return Err(format!("{name}={part} exceeds {max}"));
                }
            }
            Ok(())
        }
        Kind::Strides => {
            for s in stride_parts(v) {
                if !(-512..=511).contains(&s) {
                    return Err(format!("stride {s} is outside -512..=511"));
                }
            }
            Ok(())
        }
        Kind::Scale => {
            if f16::from_raw(v).is_some_and(|s| s.is_finite()) {
                Ok(())
            } else {
                Err("scale must be finite".into())
            }
        }
        Kind::Flag | Kind::AltOpcode(_) => Ok(()),
        Kind::Pow2 if !v.is_power_of_two() || v < u128::from(f.min) || v > u128::from(f.max) => {
            Err(format!(
                "{}={v} is not a power of two in {}..={}",
                f.name, f.min, f.max
            ))
        }
        Kind::Uint | Kind::Channel | Kind::Count | Kind::CodeBits | Kind::Pow2 => {
            let (min, max) = (u128::from(f.min), u128::from(f.max));
            if v >= min && v <= max {
                Ok(())
            } else if min == 0 {
                Err(format!("{}={v} exceeds {max}", f.name))
            } else {
                Err(format!("{}={v} is outside {min}..={max}", f.name))
            }
        }
    }
}

/// What an instruction addresses (see [`Instr::target`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Target {
    /// The channel, where the instruction has one.
    pub(crate) ch: Option<u8>,
    /// The bank select of a single-bank instruction.
    pub(crate) bank: Option<BankSel>,
    /// The row it opens (ACT, ACTAB), else 0.
    pub(crate) row: u32,
    /// The column it reads or writes (column commands), else 0.
    pub(crate) col: u16,
}

impl Instr {
    /// The instruction's row of the table.
    pub(crate) fn spec(&self) -> &'static Spec {
        &TABLE[self.row()]
    }

    /// Every address field, in table order: the field, its value and the
    /// space it points into.
    pub(crate) fn addresses(&self) -> impl Iterator<Item = (&'static Field, u64, Space)> + '_ {
        let fields = self.spec().fields.iter().zip(self.values());
        fields.filter_map(|(f, x)| Some((f, x as u64, self.space_of(f)?)))
    }

    /// The space field `f` points into (`None` for a non-address): its
    /// `space_if` alternative when that flag is set.
    fn space_of(&self, f: &Field) -> Option<Space> {
        match f.space_if {
            Some((flag, alt)) if self.flag(flag) => Some(alt),
            _ => f.space,
        }
    }

    /// Whether the flag field `name` is set (false when there is none).
    pub(crate) fn flag(&self, name: &str) -> bool {
        let v = self.values();
        self.spec()
            .fields
            .iter()
            .zip(&v)
            .any(|(f, &x)| f.name == name && matches!(f.kind, Kind::Flag) && x != 0)
    }

    /// The loop offset field `f` of this instruction gets under `offs`.
    #[inline]
    fn offset_of(&self, f: &Field, offs: &[i64; 6]) -> i64 {
        if !f.strided {
            return 0;
        }
        self.space_of(f).map_or(0, |s| offs[s as usize])
    }
}
