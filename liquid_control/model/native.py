"""Optional compiled kernel for LTC inference (no gradients) on the CPU.

An LTC step on a 19-neuron wiring is about 60 tiny tensor operations, and on a robot CPU
their dispatch overhead, not arithmetic, sets the cost. This module compiles a small C
function that runs whole steps (input map, sensory synapses, all unfolds, output map)
on the wiring's synapse lists, and loads it with ctypes.

The C source is embedded below and compiled on first use with the system C compiler
(``cc``, or ``$CC``) into ``$XDG_CACHE_HOME/liquid_control`` (default
``~/.cache/liquid_control``), named by a hash of source, flags and machine type, so it
compiles once per machine. If no compiler is found or compilation fails, ``load_kernel()`` returns
None, logs why once, and callers use the PyTorch path, which computes the same values.
Set ``LIQUID_CONTROL_NATIVE=0`` to force the PyTorch path.
"""

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

LOGGER = logging.getLogger(__name__)

SOURCE = r'''
#include <math.h>
#include <stddef.h>

typedef struct {
    int inputs, units, outputs, sensory_count, synapse_count, unfolds;
    float min_elapsed;
    const float *input_weight, *input_bias, *output_weight, *output_bias;
    const int *sensory_source, *sensory_target;
    const float *sensory_sigma, *sensory_offset, *sensory_weight_erev, *sensory_weight;
    const int *source, *target;
    const float *sigma, *offset, *weight_erev, *weight;
    const float *leak_numerator, *leak_denominator, *capacitance;
} ltc_parameters;

/* Run `steps` LTC steps for each of `batch` samples.
   x (batch, steps, inputs), elapsed (batch, steps), state (batch, units) in and out,
   outputs (batch, steps, outputs). work needs 5 * units + inputs floats. */
void ltc_run(const ltc_parameters *p, int batch, int steps, const float *x,
             const float *elapsed, float *state, float *outputs, float *work)
{
    const int n = p->units;
    float *numerator0 = work, *denominator0 = work + n, *rate = work + 2 * n;
    float *numerator = work + 3 * n, *denominator = work + 4 * n, *mapped = work + 5 * n;
    for (int b = 0; b < batch; ++b) {
        float *v = state + (size_t)b * n;
        for (int t = 0; t < steps; ++t) {
            const size_t bt = (size_t)b * steps + t;
            const float *input = x + bt * p->inputs;
            for (int i = 0; i < p->inputs; ++i)
                mapped[i] = input[i] * p->input_weight[i] + p->input_bias[i];
            float dt = elapsed[bt];
            if (!(dt > p->min_elapsed)) dt = p->min_elapsed;
            const float per_step = (float)p->unfolds / dt;
            for (int j = 0; j < n; ++j) {
                numerator0[j] = p->leak_numerator[j];
                rate[j] = p->capacitance[j] * per_step;
                denominator0[j] = p->leak_denominator[j] + rate[j];
            }
            for (int e = 0; e < p->sensory_count; ++e) {
                const float z = p->sensory_sigma[e] * mapped[p->sensory_source[e]]
                                + p->sensory_offset[e];
                const float s = 1.0f / (1.0f + expf(-z));
                numerator0[p->sensory_target[e]] += p->sensory_weight_erev[e] * s;
                denominator0[p->sensory_target[e]] += p->sensory_weight[e] * s;
            }
            for (int u = 0; u < p->unfolds; ++u) {
                for (int j = 0; j < n; ++j) {
                    numerator[j] = numerator0[j] + rate[j] * v[j];
                    denominator[j] = denominator0[j];
                }
                for (int e = 0; e < p->synapse_count; ++e) {
                    const float z = p->sigma[e] * v[p->source[e]] + p->offset[e];
                    const float s = 1.0f / (1.0f + expf(-z));
                    numerator[p->target[e]] += p->weight_erev[e] * s;
                    denominator[p->target[e]] += p->weight[e] * s;
                }
                for (int j = 0; j < n; ++j) v[j] = numerator[j] / denominator[j];
            }
            float *out = outputs + bt * p->outputs;
            for (int o = 0; o < p->outputs; ++o)
                out[o] = v[o] * p->output_weight[o] + p->output_bias[o];
        }
    }
}
'''

FLAGS = ['-O2', '-shared', '-fPIC', '-std=c99']

_FLOAT_P = ctypes.POINTER(ctypes.c_float)
_INT_P = ctypes.POINTER(ctypes.c_int)


class Parameters(ctypes.Structure):
    """Mirror of the C struct ``ltc_parameters``; fields in the same order."""

    _fields_ = [(name, ctypes.c_int) for name in (
        'inputs', 'units', 'outputs', 'sensory_count', 'synapse_count', 'unfolds')] + [
        ('min_elapsed', ctypes.c_float)] + [(name, _FLOAT_P) for name in (
            'input_weight', 'input_bias', 'output_weight', 'output_bias')] + [
        ('sensory_source', _INT_P), ('sensory_target', _INT_P)] + [
        (name, _FLOAT_P) for name in (
            'sensory_sigma', 'sensory_offset', 'sensory_weight_erev', 'sensory_weight')] + [
        ('source', _INT_P), ('target', _INT_P)] + [
        (name, _FLOAT_P) for name in ('sigma', 'offset', 'weight_erev', 'weight',
                                      'leak_numerator', 'leak_denominator', 'capacitance')]


_lock = threading.Lock()
_kernel = None
_attempted = False


def cache_dir() -> Path:
    """Return the folder for the compiled kernel."""
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base) / 'liquid_control'


def _compile(target: Path) -> None:
    compiler = os.environ.get('CC') or shutil.which('cc') or shutil.which('gcc')
    if compiler is None:
        raise OSError('no C compiler found (set CC or install gcc)')
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        source = Path(folder) / 'ltc_kernel.c'
        source.write_text(SOURCE)
        built = Path(folder) / target.name
        result = subprocess.run([compiler, *FLAGS, '-o', str(built), str(source), '-lm'],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise OSError(f'{compiler} failed: {result.stderr.strip()[:500]}')
        os.replace(built, target)


def load_kernel() -> Optional[ctypes.CDLL]:
    """Return the compiled kernel library, compiling it on first use; None if unavailable."""
    global _kernel, _attempted
    if os.environ.get('LIQUID_CONTROL_NATIVE', '1') == '0':
        return None
    with _lock:
        if _attempted:
            return _kernel
        _attempted = True
        # The machine type is in the name so a home folder shared between an x86 PC and an
        # ARM robot keeps one library for each.
        identity = SOURCE + ' '.join(FLAGS) + platform.machine() + platform.system()
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        target = cache_dir() / f'ltc_kernel_{digest}.so'
        try:
            if not target.is_file():
                LOGGER.info('compiling the LTC inference kernel into %s', target)
                _compile(target)
            library = ctypes.CDLL(str(target))
            library.ltc_run.restype = None
            library.ltc_run.argtypes = [
                ctypes.POINTER(Parameters), ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            _kernel = library
        except (OSError, subprocess.SubprocessError) as error:
            LOGGER.info('LTC inference kernel unavailable, using PyTorch instead: %s', error)
            _kernel = None
        return _kernel
