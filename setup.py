"""Build hook: ship the top-level recipes/ inside the package.

The shipped recipes live at the top of the repository (`recipes/*.yaml`), where a reader finds them next to
the docs. An installed package has no repository around it, so the build copies them to
`diffma_cli/recipes/` in the wheel, where `diffma_cli.config.load_recipe` looks first. Everything else about
the build is declared in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RECIPES = Path(__file__).parent / "recipes"


class BuildWithRecipes(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "diffma_cli" / "recipes"
        self.mkpath(str(target))
        for recipe in sorted(RECIPES.glob("*.yaml")):
            self.copy_file(str(recipe), str(target / recipe.name))


setup(cmdclass={"build_py": BuildWithRecipes})
