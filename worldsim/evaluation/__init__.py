"""How closely a world follows the real game: PSNR, rules, action following, ends."""
