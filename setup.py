"""Build script for the liquid_control ament_python package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'liquid_control'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, PACKAGE + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + PACKAGE + '/models', glob('models/*.lcm') + glob('models/*.md')),
    ],
    # Runtime dependencies come from rosdep (package.xml) in a ROS workspace and from
    # requirements.txt in the virtual environment, so pip does not pull a second torch.
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},
    zip_safe=True,
    maintainer='liquid_control developers',
    maintainer_email='liquid-control@example.com',
    description='Liquid time-constant neural network policies for ROS 2 robots.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'liquid-control = liquid_control.cli.main:main',
            'policy_node = liquid_control.nodes.policy_node:main',
            'recorder_node = liquid_control.nodes.recorder_node:main',
            'sim_node = liquid_control.nodes.sim_node:main',
            'expert_node = liquid_control.nodes.expert_node:main',
        ],
    },
)
