"""YAML recipes: a whole pruning job in one validated file, and the recipes shipped with prunekit."""

from prunekit.recipes.config import Recipe, builtin_recipe_text, load_recipe, parse_recipe
from prunekit.recipes.validation import RecipeError

__all__ = ["Recipe", "RecipeError", "builtin_recipe_text", "load_recipe", "parse_recipe"]
