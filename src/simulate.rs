//! Simulated WeChat callbacks (being written).
