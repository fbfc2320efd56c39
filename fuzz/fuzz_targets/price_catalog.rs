//! `switchyard::spend::PriceCatalog::from_litellm_json`: LiteLLM's price
//! file is fetched from the internet and read as it is, so any bytes must
//! load or be a `PriceError` — never a panic — and every price loaded must
//! cost any usage without panicking, monotonically in each token count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::model::providers::Usage;
use switchyard::spend::PriceCatalog;

fuzz_target!(|data: &[u8]| {
    let Ok(catalog) = PriceCatalog::from_litellm_json(data) else {
        return;
    };
    let counts = [0u64, 1, 199_999, 200_001, u64::from(u32::MAX), u64::MAX];
    for (name, price) in catalog.iter() {
        assert!(
            catalog.get(name).is_some(),
            "{name} is listed but not found"
        );
        for &n in &counts {
            let mut small = Usage::default();
            (small.input, small.output) = (n, n);
            let mut big = small;
            big.output = big.output.saturating_add(1);
            assert!(price.cost(&big) >= price.cost(&small));
            small.cached_read = n / 2;
            small.cache_write = n / 3;
            small.reasoning = n / 4;
            let _ = price.cost(&small).micros();
        }
    }
});
