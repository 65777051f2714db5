# tests/cuda_emu/rewrite.sed - what kernels/cuda/cuda.mk (CUDA_EMU=1) does to a .cu or .cuh file
# before g++ compiles it against tests/cuda_emu/td_cuda_emu.h (sed -E; GNU sed). Line numbers are
# kept (the rule puts `#line 1 "file"` in front), so diagnostics point into the source.
#
# 1. A launch whose <<< ... >>> spans lines: the lines are gathered into one pattern space, with
#    their newlines, so the substitution below sees the whole launch and no line moves.
:gather
/<<</ {
    />>>/! {
        $!N
        $!b gather
    }
}
# 2. k<<<grid, block, smem, stream>>>(args) -> tdemu::cfg(grid, block, smem, stream).go(k, "k")(args)
#    (k may carry template arguments without nested <> or parentheses: k_gemv<NT, DT>)
s/([A-Za-z_][A-Za-z0-9_]*(<[^<>;()]*>)?)<<<([^;]*)>>>/tdemu::cfg(\3).go(\1, "\1")/g
# 3. extern __shared__ [__align__(n)] T name[]; -> T *name = (T *)tdemu::dyn_smem();
#    (T one or more words: float, unsigned char, float4)
s/extern[[:space:]]+__shared__[[:space:]]+(__align__\([^)]*\)[[:space:]]+)?([A-Za-z_][A-Za-z0-9_:]*([[:space:]]+[A-Za-z_][A-Za-z0-9_:]*)*)[[:space:]]+([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*\[[[:space:]]*\][[:space:]]*;/\2 *\4 = (\2 *)tdemu::dyn_smem();/g
# 4. A statement `__shared__ [__align__(n)] T name[dims];` at the start of a line gets a static
#    registration after it: the emulator fills the variable with 0xff bytes before every block, so
#    a read before the block's first write gives NaN / garbage as on a GPU, not the zero of a fresh
#    static or the previous block's value. Other forms (several names, an initializer) still
#    compile, as plain statics, without the fill.
s/^([[:space:]]*)__shared__[[:space:]]+((__align__\([^)]*\)[[:space:]]+)?[A-Za-z_][A-Za-z0-9_:]*([[:space:]]+[A-Za-z_][A-Za-z0-9_:]*)*)[[:space:]]+([A-Za-z_][A-Za-z0-9_]*)((\[[^];]+\])*)[[:space:]]*;/\1__shared__ \2 \5\6; [[maybe_unused]] static const bool tdemu_shared_\5 = tdemu::shared_decl(\&\5, sizeof \5);/M
