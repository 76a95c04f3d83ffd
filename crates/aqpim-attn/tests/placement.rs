//! Placement rules of the PIM lowering: caches spread over idle channels, or
//! AttAcc's simulator's one channel per cache.

use aqpim_attn::pim::{analytic_layer, layer_footprint, LayerJob, PimKind};
use aqpim_pim::Device;

/// AttAcc at 64K with batch 2 on 80 channels: 64 FP16 caches. Spread over
/// idle channels, every channel works; under AttAcc's one-channel-per-cache
/// rule 16 channels sit idle, and the layer takes longer.
#[test]
fn caches_spread_over_idle_channels() {
    let device = Device::preset("hbm3-attacc-5.2").unwrap();
    let job = |placement| LayerJob {
        kind: PimKind::Fp16,
        head_dim: 128,
        heads: 64,
        kv_heads: 32,
        group: 1,
        ctx: 65536,
        fp_tokens: 0,
        quantize: false,
        codebooks: aqpim_kvcache::CodebookScope::Model,
        placement,
    };
    let spread = job(aqpim_attn::pim::Placement::Spread);
    let one = job(aqpim_attn::pim::Placement::OnePerCache);
    assert_eq!(layer_footprint(&device, &spread).unwrap().channels_used, 80);
    assert_eq!(layer_footprint(&device, &one).unwrap().channels_used, 64);
    let (s, o) = (
        analytic_layer(&device, &spread).unwrap(),
        analytic_layer(&device, &one).unwrap(),
    );
    assert!(
        s.cycles < o.cycles,
        "spread {} vs one per cache {}",
        s.cycles,
        o.cycles
    );
}
