"""The accuracy guard: find the nodes that break a low-precision model and keep them in FP32."""
