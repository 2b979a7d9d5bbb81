"""ECGBench: PULSE's nine ECG-image test sets (builder: ecg_bench_dataset_builder.Builder)."""
