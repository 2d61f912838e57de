// The dtypes safetensors defines, with their element size in bytes.
export const DTYPE_SIZES = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
} as const;

export type DType = keyof typeof DTYPE_SIZES;

/** The dtypes ParamΔ differences. F8 formats are carried unchanged, like integers. */
export const FLOAT_DTYPES = ['BF16', 'F16', 'F32', 'F64'] as const;
export type FloatDType = (typeof FLOAT_DTYPES)[number];

export function isDType(s: string): s is DType {
  return Object.prototype.hasOwnProperty.call(DTYPE_SIZES, s);
}

export function isFloatDType(d: string): d is FloatDType {
  return (FLOAT_DTYPES as readonly string[]).includes(d);
}

export function dtypeSize(d: DType): number {
  return DTYPE_SIZES[d];
}
