//! What a PIM device's units cost, as every PIM report of the CLI prints it:
//! area per DRAM die and peak power per stack (`Device::area`, `Device::power`).

/// What a PIM device's units cost: area per DRAM die and peak power per
/// stack, as every PIM report prints them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DevicePrice {
    /// PIM compute units per DRAM die, mm^2.
    pub pim_logic_mm2_per_die: f64,
    /// PIM buffers and registers per DRAM die, mm^2.
    pub pim_buffer_mm2_per_die: f64,
    /// Both, mm^2.
    pub pim_area_mm2_per_die: f64,
    /// Share of the DRAM die.
    pub pim_die_share: f64,
    /// The DRAM die's area, mm^2, and where it comes from.
    pub dram_die_mm2: f64,
    /// Source of the die area.
    pub dram_die_source: String,
    /// Peak PIM power of one stack, W, and the command that draws it.
    pub pim_peak_power_w: f64,
    /// The command at the peak.
    pub pim_peak_command: String,
    /// The stack's PIM power budget, W.
    pub pim_power_budget_w: f64,
    /// Whether the peak stays within the budget.
    pub pim_within_budget: bool,
}

impl DevicePrice {
    /// The price of `d`'s units.
    pub fn of(d: &aqpim_pim::Device) -> DevicePrice {
        let a = d.area();
        let p = d.power();
        DevicePrice {
            pim_logic_mm2_per_die: a.logic_mm2,
            pim_buffer_mm2_per_die: a.buffer_mm2,
            pim_area_mm2_per_die: a.total_mm2,
            pim_die_share: a.die_share,
            dram_die_mm2: a.die_mm2,
            dram_die_source: d.units.die.dram_die_source.clone(),
            pim_peak_power_w: p.peak_w,
            pim_peak_command: p.peak_command,
            pim_power_budget_w: p.budget_w,
            pim_within_budget: p.within_budget,
        }
    }

    /// Two lines for a human table.
    pub fn lines(&self) -> [String; 2] {
        [
            format!(
                "PIM area per DRAM die: {:.2} mm2 ({:.2} logic + {:.2} buffers), {:.1} % of the {:.0} mm2 die ({})",
                self.pim_area_mm2_per_die,
                self.pim_logic_mm2_per_die,
                self.pim_buffer_mm2_per_die,
                100.0 * self.pim_die_share,
                self.dram_die_mm2,
                self.dram_die_source
            ),
            format!(
                "peak PIM power per stack: {:.1} W ({}), budget {:.0} W{}",
                self.pim_peak_power_w,
                self.pim_peak_command,
                self.pim_power_budget_w,
                if !self.pim_within_budget {
                    " (over: run with the power limit to stay within it)"
                } else {
                    ""
                }
            ),
        ]
    }
}
