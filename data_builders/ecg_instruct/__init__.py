"""ECGInstruct: PULSE's 1.16 M ECG-image instruction-tuning set (builder: ecg_instruct_dataset_builder.Builder)."""
